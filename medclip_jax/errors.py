"""Errors a user can cause, reported as one paragraph instead of a traceback."""


class UserError(Exception):
  """A problem with the user's config, data or checkpoint.

  `main` prints the message and exits with status 2; the message must say what
  is wrong and what to do about it.
  """
