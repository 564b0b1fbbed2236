"""DQN instrument locator: finds the instrument centre point in a volume without a click.

A deep Q-network agent moves on a fixed grid (96³ by default) with a multi-scale search (step
9 → 3 → 1), trained from centre-point annotations only (``semisupseg train-locator``). Use::

    from SemiSupSegLib.locator import load_locator, locate
    result = locate(load_locator("phantom-locator"), image)   # result.point_lps, result.q_value

See :mod:`.environment` for the state, actions, reward and search; :mod:`.agent` for the network
and replay memory; :mod:`.train` for training; :mod:`.store` for the folder format.
"""

from .locate import LocateResult, locate
from .store import Locator, load_locator, save_locator

__all__ = ["LocateResult", "Locator", "load_locator", "locate", "save_locator"]
