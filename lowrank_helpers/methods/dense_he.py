"""The fair comparison's second dense baseline: He et al. (2015)'s init, W ~ N(0, 2/d_in)
(``kaiming_normal_`` for ReLU) and bias 0, in every target layer."""
from .base import Method, register_method

register_method(Method("full_he", "He-init full-rank", factorized=False, init="he",
                       linestyle=":"))
