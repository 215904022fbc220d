"""``yialign-reward train`` runs the recipe's reward stage alone, with the pipeline's checks."""

from reward.cli import main


def test_train_without_upstream_outputs_names_the_missing_input(tmp_path, capsys):
    assert main(["train", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "needs input 'policy' from stage 'sft_hard'" in err


def test_train_rejects_unknown_reward_key(tmp_path, capsys):
    assert main(["train", f"run_dir={tmp_path / 'run'}", "+stage.reward.finetune.min_gapp=1"]) == 2
    assert "min_gapp" in capsys.readouterr().err
