"""Load testing for quickpay.

- ``loadtest.generator``: open-loop HTTP/1.1 generator (constant arrival rate, latency from
  the intended send time, HdrHistogram, multi-process) and its CLI.
- ``loadtest.stepper``: steps the offered rate up to find the highest sustained rate.
- ``loadtest.plots``: PNG plots of a sweep.
- ``loadtest.locustfile``: Locust suite with a realistic partner request mix and pass/fail
  gates (run it with ``locust -f``; never import it, gevent patches the process).
"""
