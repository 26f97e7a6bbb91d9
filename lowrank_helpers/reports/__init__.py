"""Tables, prose, figures and widgets from the records; README's blocks."""

from .. import submodules_on_use

__getattr__ = submodules_on_use(__name__)
