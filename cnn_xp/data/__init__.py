"""Data: IDX loading, discovery, checksummed download, preparation, device batches.

    ds = load_dataset("fashion-mnist")            # finds or downloads the four files
    x = to_float(ds.train_images)                 # (60000, 1, 28, 28) float32 in [0, 1]
    x_tr, t_tr, x_val, t_val = train_val_split(x, ds.train_labels)   # 50k / 10k
    for xb, tb in BatchIterator(x_tr, t_tr, 100, seed=0, device="cpu"): ...
"""
from .batches import BatchIterator
from .catalog import is_known, load_data
from .command import download_command
from .download import download, fetch_file
from .errors import DatasetError
from .loader import Dataset, load_dataset, load_files
from .descriptions import DataDescription
from .prep import channel_stats, normalize, one_hot, to_float, to_input, train_val_split
from .sources import (
    DATA_ENV, DATASETS, cache_dir, describe_search, download_dir, find_files,
    mirror_env_var, mirrors_for, search_dirs,
)

__all__ = [
    "BatchIterator", "DATASETS", "is_known", "load_data", "DataDescription", "channel_stats", "normalize", "to_input", "DATA_ENV", "Dataset", "DatasetError", "cache_dir",
    "describe_search", "download", "download_command", "download_dir", "fetch_file",
    "find_files", "load_dataset", "load_files", "mirror_env_var", "mirrors_for", "one_hot",
    "search_dirs", "to_float", "train_val_split",
]
