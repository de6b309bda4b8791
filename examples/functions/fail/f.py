def f(event):
    raise ValueError("this function always fails")
