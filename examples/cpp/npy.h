// npy.h: read and write float32 .npy files (NumPy format 1.0-3.0, C order, little-endian) with no dependency.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

inline int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Value of `key` in the header dict, e.g. "'<f4'" or "(4, 1, 28, 28)" (the text up to the next ',' or ')').
inline std::string header_value(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(" ", colon + 1);
  size_t end = header[start] == '(' ? header.find(')', start) + 1 : header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

inline Array load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  f.read(&header[0], header_len);
  if (!f) throw std::runtime_error(path + ": truncated .npy header");
  if (header_value(header, "descr") != "'<f4'")
    throw std::runtime_error(path + ": dtype " + header_value(header, "descr") + ", expected float32 ('<f4')");
  if (header_value(header, "fortran_order") != "False")
    throw std::runtime_error(path + ": Fortran-ordered arrays are not supported (save with np.ascontiguousarray)");
  Array a;
  std::string dims = header_value(header, "shape");
  std::stringstream ss(dims.substr(1, dims.size() - 2));
  for (std::string tok; std::getline(ss, tok, ',');)
    if (tok.find_first_not_of(" ") != std::string::npos) a.shape.push_back(std::stoll(tok));
  a.data.resize(static_cast<size_t>(numel(a.shape)));
  f.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(a.data.size() * sizeof(float)));
  if (!f) throw std::runtime_error(path + ": truncated data");
  return a;
}

inline void save(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;  // "4, 10"; a 1-D shape keeps its comma: "4,"
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  size_t total = 10 + header.size() + 1;  // magic+version+len, header, '\n'; padded to a multiple of 64
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(len), 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(numel(shape) * sizeof(float)));
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace npy
