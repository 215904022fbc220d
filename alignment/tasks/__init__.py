"""Tasks: what a policy is asked, how its answer must look, how it is judged (the one home of task concepts).

    format.py    the one prompt and answer format that SFT data, synth search, online DPO and eval all
                 use (instruction + problem in one user turn; worked steps ending "#### <answer>"; code
                 in one fenced block)
    problems/    Problem + load_problems(source, split, n, seed): GSM-Symbolic (split by template), our
                 bilingual templates, CodeI/O; eval-only ASDiv and HumanEval
    verify/      get_verifier("math" | "code") -> verify(problem, response) -> Verdict (math: answer
                 extraction + Math-Verify compare, CPU-time bounded; code: sandboxed subprocess)
    evaluate.py  the `eval` stage (held-out verified accuracy with intervals, pass@k, paired tests)

A task's walk from recipe to verdict stays inside this package: a recipe names a problem source, the
format words it, a sampler answers, the verifier judges.
"""
