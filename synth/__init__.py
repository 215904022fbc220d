"""synth: synthetic math/code data by search over solution steps, kept where verifiers accept.

    problems/   Problem + load_problems(source, split, n, seed): GSM-Symbolic (split by template),
                our bilingual templates, CodeI/O; eval-only ASDiv and HumanEval
    verify/     get_verifier("math" | "code") -> verify(problem, response) -> Verdict
                (math: answer extraction + Math-Verify compare, CPU-time bounded; code: sandboxed subprocess)
    search/     MCTS (PUCT) and DFS over steps proposed by any Sampler; lockstep batching
    stage.py    the `synth` stage runner (SFT records, preference pairs, process labels + cards)
    evaluate.py the `eval` stage runner (held-out verified accuracy, pass@k)
    cli.py      `yialign-synth` (Hydra, recipes/synth/)

Only synth/, reward/ and the pipeline's `_target_` paths reference this package.
"""
