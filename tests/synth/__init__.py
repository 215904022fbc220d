"""Tests of the synth area: verifiers, sandbox, problems, search, stage, eval."""
