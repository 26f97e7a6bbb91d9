"""The fair comparison's dense-head control: the hidden layers factorized, the output layer
the task's dense layer. At ranks below the number of classes a factorized head confines the
logits to an r-dimensional affine space; this control tells that apart from the rest."""
from .base import Method, register_method

register_method(Method("densehead", "LoRA layers, dense head", factorized=True,
                       default_init="lora", linestyle="-.", dense_output=True))
