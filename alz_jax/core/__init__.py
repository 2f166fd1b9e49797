"""The training core: sharding, optimizer, weight averages, the train and predict steps, their
assembly and checkpoints. Imports data, models and host; never evaluation, run or commands."""
