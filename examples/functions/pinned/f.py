# A function with a pinned package: the worker installs six==1.16.0 into
# its package store once and puts it on this function's sys.path.
import six


def f(event):
    return {"six": six.__version__, "text": six.ensure_str(event.get("text", "ok"))}
