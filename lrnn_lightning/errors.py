"""Errors that are the user's to fix: the entry points print their message alone, no stack trace."""


class UserError(Exception):
    """Bad input (missing corpus, empty file, wrong checkpoint): the message says what to do."""


class CorpusError(UserError):
    pass


class CheckpointError(UserError):
    pass
