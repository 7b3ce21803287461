"""The one PPO core shared by both front ends: pure, device-agnostic tensor functions.

Modules: `advantages` (TD, k-step, GAE(λ), λ-returns, group baselines), `losses` (surrogates,
value loss, entropy, Bradley–Terry, masked reductions), `kl` (exact KL, k1/k2/k3, β
controllers), `trpo`, `ppo` (the loss and the update), `metrics`, `checkpoint`, `catalog`,
`config`, `device`, `checks`, `distributed`, `preference`. `core` imports neither front end.
"""
