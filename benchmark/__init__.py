"""benchmark: the transfer-learning protocol of Ho & Kim (2021) on any dataset directory made by data_prep."""
