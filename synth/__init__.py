"""synth: synthetic math/code data by search over solution steps, kept where verifiers accept.

    search/     MCTS (PUCT) and DFS over steps proposed by any Sampler; lockstep batching
    runner.py   the `synth` stage runner (SFT records, preference pairs, process labels + cards)
    outputs.py  the stage's files and their data cards
    cli.py      `yialign-synth` (Hydra, recipes/synth/)

The tasks it searches over (problems, the prompt/answer format, verifiers) and the eval stage live in
alignment/tasks/, the one home of task concepts; synth only searches and writes what it found.
"""
