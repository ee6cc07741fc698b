"""The names of the metrics a lab run stores, in one place: the training loops write them, the studies, the
learning-rate selection and the training check read them."""

TEST_ACC = "test_acc"  # accuracy on the test split (BN with running statistics)
VALID_ACC = "valid_acc"  # accuracy on the validation examples held out of the training set (selection runs)
TEST_BPC = "test_bpc"  # the language model's bits per character on the test half of the held-out text
VALID_BPC = "valid_bpc"  # ... on the validation half (selection; also the curve along training)

__all__ = ["TEST_ACC", "VALID_ACC", "TEST_BPC", "VALID_BPC"]
