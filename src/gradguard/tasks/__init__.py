"""Built-in training tasks on real data that ships with Python packages (no downloads).

``gradguard.tasks.get(name)`` returns a :class:`Task`: a model builder, a train/validation
split, a loss, a metric with the level that counts as "trained", and a default budget. A task
of your own is a function returning a :class:`Task`, named as ``"module:function"``.
"""

from ._adding import SUMMARY as _ADDING_SUMMARY
from ._adding import adding
from ._base import Task, batches, get, load, names, register, summaries
from ._charlm import SUMMARY as _CHARLM_SUMMARY
from ._charlm import charlm
from ._digits import SUMMARY as _DIGITS_SUMMARY
from ._digits import digits
from ._mnist import SUMMARY as _MNIST_SUMMARY
from ._mnist import mnist

register("digits", digits, _DIGITS_SUMMARY)
register("mnist", mnist, _MNIST_SUMMARY)
register("adding", adding, _ADDING_SUMMARY)
register("charlm", charlm, _CHARLM_SUMMARY)

__all__ = ["Task", "adding", "batches", "charlm", "digits", "get", "load", "mnist", "names",
           "register", "summaries"]
