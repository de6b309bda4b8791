def f(event):
    while True:
        pass
