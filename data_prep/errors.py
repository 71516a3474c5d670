"""The one exception type of data_prep: the CLI turns it into a single message and exit code 2."""


class DataPrepError(Exception):
    """Bad input or an unwritable output, with a message that names the file or option."""
