"""Model zoo: one builder per family; ``neuron=`` picks a quadratic neuron type or the ReLU twin."""

from quadexport.zoo import gpt, resnet, small  # noqa: F401  (registers the builders)
from quadexport.zoo.counting import count_macs, count_params
from quadexport.zoo.registry import ModelInfo, build_model, check_model_name, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "check_model_name", "count_macs", "build_model", "count_params", "get_model_info", "list_models",
           "register_model"]
