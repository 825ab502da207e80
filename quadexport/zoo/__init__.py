"""Model zoo: one builder per family; ``neuron=`` picks a quadratic neuron type or the ReLU twin."""

from quadexport.zoo import gpt, resnet, small  # noqa: F401  (registers the builders)
from quadexport.zoo.counting import count_macs, count_params
from quadexport.zoo.registry import ModelInfo, check_model_name, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "check_model_name", "count_macs", "count_params", "create_model", "get_model_info", "list_models",
           "register_model"]
