"""Leap over RLlib's algorithms (PPO, APPO, IMPALA) as the inner learner (issue 11).

RLlib imports Ray, so this lives in the runtime layer, never in ``leap_rl``: ``env`` (the A2C
path's Atari env as RLlib's vector env), ``module`` (leap_rl's ActorCritic as an RLModule),
``learner`` (the Leap Learner mixin), ``runner`` (``RLlibTaskRunner``, the TaskRunner
interface). docs/RLLIB.md says what differs from the paper's A2C.
"""
