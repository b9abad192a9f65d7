"""pure-rl: PURE (min-form credit assignment for process-reward RL) in TorchRL's idiom.

``pure_rl.objectives`` holds the algorithm (``credit``: the tensor functions and baselines; ``estimators``: the
TorchRL value estimators; ``loss``: the PPO loss that selects them by name); ``pure_rl.registry`` the named
building blocks a config selects; ``pure_rl.config`` the typed run config; the rest of ``pure_rl`` is the run.
"""

__version__ = "0.1.0"
