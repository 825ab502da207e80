// onnx_scan.h: what the client needs to know about an ONNX file before creating a session, read straight from the
// protobuf wire format (no protobuf or onnx dependency): the op types of the main graph's nodes in the custom domain,
// the custom-domain functions (bodies) the file carries, and its metadata_props.
//
// Field numbers (onnx.proto): ModelProto.graph = 7, .metadata_props = 14, .functions = 25; GraphProto.node = 1;
// NodeProto.op_type = 4, .domain = 7; FunctionProto.name = 1, .domain = 10; StringStringEntryProto.key = 1, .value = 2.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>

namespace onnx_scan {

struct ModelScan {
  std::set<std::string> used_ops;  // op types of main-graph nodes in the domain
  std::set<std::string> bodies;    // functions of the domain (model-local bodies)
  std::map<std::string, std::string> metadata;
  bool uses_domain() const { return !used_ops.empty(); }
  bool needs_kernel() const {  // a node without a body can only run on the kernel library
    for (const auto& op : used_ops)
      if (!bodies.count(op)) return true;
    return false;
  }
};

class Reader {
 public:
  Reader(const char* p, const char* end) : p_(p), end_(end) {}
  bool done() const { return p_ >= end_; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) throw std::runtime_error("truncated ONNX file (varint)");
      uint8_t b = static_cast<uint8_t>(*p_++);
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw std::runtime_error("corrupt ONNX file (varint)");
  }
  // Next field: its number, and for length-delimited fields a sub-reader over the payload; other wire types are
  // skipped (sub-reader empty).
  bool next(uint32_t& field, Reader& payload) {
    if (done()) return false;
    uint64_t tag = varint();
    field = static_cast<uint32_t>(tag >> 3);
    payload = Reader(end_, end_);
    switch (tag & 7) {
      case 0: varint(); break;
      case 1: skip(8); break;
      case 5: skip(4); break;
      case 2: {
        uint64_t n = varint();
        if (n > uint64_t(end_ - p_))
          throw std::runtime_error("truncated ONNX file (field " + std::to_string(field) + ")");
        payload = Reader(p_, p_ + n);
        p_ += n;
        break;
      }
      default: throw std::runtime_error("corrupt ONNX file (wire type " + std::to_string(tag & 7) + ")");
    }
    return true;
  }
  std::string str() const { return std::string(p_, end_); }

 private:
  void skip(size_t n) {
    if (n > size_t(end_ - p_)) throw std::runtime_error("truncated ONNX file");
    p_ += n;
  }
  const char* p_;
  const char* end_;
};

// The string fields `a` and `b` of a message (e.g. NodeProto op_type/domain).
inline std::pair<std::string, std::string> two_strings(Reader r, uint32_t a, uint32_t b) {
  std::pair<std::string, std::string> out;
  uint32_t f;
  Reader sub(nullptr, nullptr);
  while (r.next(f, sub)) {
    if (f == a) out.first = sub.str();
    if (f == b) out.second = sub.str();
  }
  return out;
}

inline ModelScan scan(const std::string& bytes, const std::string& domain) {
  ModelScan s;
  Reader model(bytes.data(), bytes.data() + bytes.size());
  uint32_t f, g;
  Reader sub(nullptr, nullptr), node(nullptr, nullptr);
  while (model.next(f, sub)) {
    if (f == 7) {
      while (sub.next(g, node))
        if (g == 1) {
          auto op = two_strings(node, 4, 7);
          if (op.second == domain) s.used_ops.insert(op.first);
        }
    } else if (f == 14) {
      auto kv = two_strings(sub, 1, 2);
      s.metadata[kv.first] = kv.second;
    } else if (f == 25) {
      auto fn = two_strings(sub, 1, 10);
      if (fn.second == domain) s.bodies.insert(fn.first);
    }
  }
  return s;
}

}  // namespace onnx_scan
