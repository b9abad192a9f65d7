"""pure-rl: PURE (min-form credit assignment for process-reward RL) in TorchRL's idiom.

``pure_rl.credit`` holds the tensor functions, ``pure_rl.estimators`` the TorchRL value estimators,
``pure_rl.loss`` the PPO loss that selects them by name, ``pure_rl.config`` the typed run config.
"""

__version__ = "0.1.0"
