"""The sets that the data flags name, by the rules training and evaluation share.

``--pairs_file`` lists the pairs and replaces ``--data``, ``--atlas`` and ``--pairs``; without
``--data``, the embedded default data (``synthetic.py``) brings its own atlas and validation
set; otherwise ``--data`` (``datasets.load_dataset``) is split into training and validation
subjects (``pairing.load_training_sets``) or validated on ``--val_data``. :func:`data_source`
says which, refusing flags the data named does not take; :func:`training_sets` and
:func:`evaluation_set` read the sets of training and of ``main.py evaluate``.
"""
import datasets
import pairing
import synthetic
import volumes

VAL_FRACTION = 0.1  # share of --data held out for validation by default


def data_source(data: str | None, atlas: str | None, pairs: str | None,
                pairs_file: str | None, task: str, replaced: dict | None = None,
                needing_data: dict | None = None) -> str:
    """Which data the data flags name, by the rules that training and evaluation share:
    ``"listed"``, the pairs of ``--pairs_file``, which replace ``--data``, ``--atlas``,
    ``--pairs`` and the flags ``replaced``; ``"default"``, without ``--data``, the default data,
    with its own atlas, atlas pairs and validation set, so that ``--atlas``, ``--pairs
    scan_to_scan`` and the flags ``needing_data`` need ``--data``; ``"data"`` otherwise.

    ``task`` names what the pairs are for in messages ("train on", "evaluate"); ``replaced`` and
    ``needing_data`` are ``{flag: value}`` of its own flags, given when the value is true. A
    ``volumes.UsageError`` names the flags given that the data named does not take.
    """
    if pairs_file is not None:
        given = [flag for flag, value in {"--data": data, "--atlas": atlas, "--pairs": pairs,
                                          **(replaced or {})}.items() if value]
        if given:
            raise volumes.UsageError(f"--pairs_file lists the pairs to {task}: drop "
                                     f"{', '.join(given)}")
        return "listed"
    if data is None:
        given = [flag for flag, value in {"--atlas": atlas, **(needing_data or {}),
                                          "--pairs scan_to_scan": pairs == "scan_to_scan"}.items()
                 if value]
        if given:
            raise volumes.UsageError(f"{', '.join(given)} need{'s' * (len(given) == 1)} --data: "
                                     f"the default data has its own atlas and validation set, "
                                     f"and is made of random deformations already")
        return "default"
    return "data"


def training_sets(data: str | None, atlas: str | None, pairs: str | None,
                  augment: tuple[str, ...],
                  val_data: str | None, val_fraction: float | None, ndim: int | None,
                  pairs_file: str | None = None
                  ) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Training set, validation set and pairing mode of the training flags."""
    source = data_source(data, atlas, pairs, pairs_file, "train on",
                         {"--augment": augment, "--val_data": val_data},
                         {"--augment": augment, "--val_data": val_data,
                          "--val_fraction": val_fraction})
    if source == "listed":
        return pair_list_sets(pairs_file, val_fraction, ndim)
    if source == "default":
        return (synthetic.load_default_data(ndim or 3), synthetic.default_validation_set(ndim or 3),
                "atlas")
    if val_data is not None and val_fraction is not None:
        raise volumes.UsageError("--val_fraction and --val_data exclude each other")
    train_set, val_set, mode = pairing.load_training_sets(
        data, atlas, pairs, val_data, VAL_FRACTION if val_fraction is None else val_fraction, ndim)
    if augment and mode != "scan_to_scan":
        raise volumes.UsageError("--augment applies to scan_to_scan pairs")
    return train_set, val_set, mode


def pair_list_sets(pairs_file: str, val_fraction: float | None, ndim: int | None
                   ) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Training and validation pairs of ``--pairs_file``: the last ``--val_fraction`` of its
    pairs (at least one) validate."""
    listed = datasets.load_pairs_file(pairs_file, ndim)
    train_set, val_set = pairing.split_pairs(
        listed, VAL_FRACTION if val_fraction is None else val_fraction, pairs_file)
    return train_set, val_set, "listed"


def evaluation_set(data: str | None, atlas: str | None, pairs: str | None,
                   shape: tuple[int, ...], pairs_file: str | None = None) -> datasets.Dataset:
    """The test set of ``evaluate``, for a model of input ``shape`` (volumes of any size, of
    the model's dimension): the pairs of ``--pairs_file``, the default data or ``--data``, by
    training's rules (:func:`data_source`)."""
    source = data_source(data, atlas, pairs, pairs_file, "evaluate")
    if source == "listed":
        return datasets.load_pairs_file(pairs_file, len(shape))
    if source == "default":
        if len(shape) not in synthetic.NUM_VALIDATION:
            raise volumes.DataError(f"no default data for a model of input shape {shape}")
        return synthetic.default_validation_set(len(shape))
    return datasets.load_dataset(data, atlas, len(shape))
