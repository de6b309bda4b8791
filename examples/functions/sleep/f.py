import time


def f(event):
    ms = int(event.get("ms", 100))
    time.sleep(ms / 1000)
    return {"slept_ms": ms}
