"""Tasks: what a policy is asked and how its answer must look (the home of task concepts).

``format``: the one prompt and answer format that SFT data, synth search, online DPO and eval
all use (instruction + problem in one user turn; a worked solution whose last line is
``#### <answer>``; code in one fenced block).
"""
