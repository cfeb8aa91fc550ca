"""The harness that `rampart demo` and `rampart scenario` run: a synthetic ad world, an
ad-server simulator that drives a real `rampart serve` with it, and the rollout scenarios.

    ground_truth      the synthetic ad traffic and each ad's true click probability
    simulator         the ad-server simulator: open-loop /predict, impressions and clicks
                      (its parts: simulator_config, simulator_batches, simulator_run)
    simulator_stats   what a simulator run saw (answers by arm, a timeline, latency)
    target            loopback-only targets and names for connection failures
    scenario_models   the shipped scenario models (models/*.onnx)
    scenarios         the scenario catalogue and the server config they run with
    serve_process     `rampart serve` as a child process
    redis_process     a private `redis-server`: the fleet store of `rampart demo --fleet`
    slack_sink        a local Slack webhook the rollout alerts land in
    session           one server (or a fleet), the simulator and rollouts on it; `run_scenario`
    verdict           what a finished rollout amounts to, as the ad server saw it

Shipped with the product and free of onnx (a test-only dependency): `bench.modelgen` builds
the models from `ground_truth` and writes them into `models/`.
"""
