import os


def f(event):
    os._exit(3)  # the runtime process dies mid-call
