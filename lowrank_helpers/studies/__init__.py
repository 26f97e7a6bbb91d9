"""The studies: which runs each trains, the learning-rate search, the theory."""
