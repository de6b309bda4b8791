def f(event):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return f"Hello, {name}!"
