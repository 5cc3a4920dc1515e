"""Services: plain classes driving the domain; the web request and a task call the same code."""
