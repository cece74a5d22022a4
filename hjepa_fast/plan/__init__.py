"""Planning with a trained H-JEPA: CEM / MPPI / gradient planners (``planners``), the model as a latent
world model (``world_model``), flat and hierarchical receding-horizon agents (``agent``), and the
``hjepa plan`` evaluation (``evaluate``)."""
