"""The one PPO core shared by both front ends: pure, device-agnostic tensor functions.

The PPO update: `advantages` (GAE(λ)), `losses` (ratio and clipped surrogates, value loss,
entropy), `ppo` (the loss and the update), `masked` (masked reductions), `diagnostics`
(approx_kl, clip fraction, explained variance). Beside it: `returns` (reward-to-go, TD, k-step,
λ-returns), `surrogates` (score function, KL penalty), `group` (GRPO/DAPO/Dr. GRPO), `preference`
(Bradley–Terry, DPO, IPO, KTO), `kl` (exact KL, k1/k2/k3, β controllers), `trpo`, `metrics`,
`checkpoint`, `catalog`, `config`, `device`, `checks`, `distributed`. `core` imports neither
front end.
"""
