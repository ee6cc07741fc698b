"""The names of the metrics a lab run stores, in one place: the training loops write them, the studies, the
learning-rate selection and the training check read them."""

TEST_ACC = "test_acc"  # accuracy on the test split (BN with running statistics)
VALID_ACC = "valid_acc"  # accuracy on the validation examples held out of the training set (selection runs)
TEST_BPC = "test_bpc"  # the language model's bits per character on the test half of the held-out text
VALID_BPC = "valid_bpc"  # ... on the validation half (selection; its first 2048 characters: the curve)
TEST_LOSS = "test_loss"  # the user's model: mean loss on the test set (its own loss function, or cross-entropy)
VALID_LOSS = "valid_loss"  # ... on the validation examples held out of the training set
TRAIN_LOSS = "train_loss"  # mean training loss over the last curve point's steps
STEP_SECONDS = "step_seconds"  # mean wall time of one training step (forward, backward, optimizer step)
MEMORY_MB = (
    "memory_mb"  # memory of one training step in MiB (CUDA: peak allocated; CPU: see normlab.lab.training.user_model)
)
DIVERGED = "diverged"  # 1.0 when the run's loss blew up (non-finite, or 10x its first value)
TRAIN_ACC = "train_acc"  # accuracy on the training examples at the end
TEST_ACC_BATCH_STATS = "test_acc_batch_stats"  # test accuracy with each test batch normalized by its own statistics
OUTPUT_SPREAD = "output_spread"  # one example's output across random batches: std / mean |logit|
FINAL_WEIGHT_NORM = "final_weight_norm"  # ||w|| of the watched layer (the weight-decay study's) at the end
SCALE_INVARIANCE_ERROR = "scale_invariance_error"  # max |f(x; 3w) - f(x; w)| / max |f(x; w)| at initialization
BATCH_MEAN_FLUCTUATION = "batch_mean_fluctuation"  # rms over steps of (batch mean - running mean) / running std
BATCH_VAR_FLUCTUATION = "batch_var_fluctuation"  # rms over steps of (batch var - running var) / running var

__all__ = [
    "TEST_ACC",
    "VALID_ACC",
    "TEST_BPC",
    "VALID_BPC",
    "TEST_LOSS",
    "VALID_LOSS",
    "TRAIN_LOSS",
    "STEP_SECONDS",
    "MEMORY_MB",
    "DIVERGED",
    "TRAIN_ACC",
    "TEST_ACC_BATCH_STATS",
    "OUTPUT_SPREAD",
    "FINAL_WEIGHT_NORM",
    "SCALE_INVARIANCE_ERROR",
    "BATCH_MEAN_FLUCTUATION",
    "BATCH_VAR_FLUCTUATION",
]
