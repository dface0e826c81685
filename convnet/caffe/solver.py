"""``solver.prototxt`` -> a convnet solver.

:func:`load_solver` reads the SolverParameter (text) and returns a :class:`SolverConfig`;
``config.build(net)`` makes the SGDSolver or AdamSolver with the same hyper-parameters, and
``config.load_net()`` reads the ``net`` (or ``train_net``) it names.
"""

import os

import numpy as np

from convnet.errors import ConfigError
from convnet.caffe import prototxt

#: lr policies convnet's solvers implement, with the fields each needs
POLICIES = {"fixed": (), "step": ("gamma", "stepsize"), "multistep": ("gamma", "stepvalue"),
            "poly": ("power",), "exp": ("gamma",), "inv": ("gamma", "power"),
            "sigmoid": ("gamma", "stepsize")}
_TYPES = {"SGD": "SGD", "ADAM": "Adam"}
_OLD_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
              "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


class SolverConfig:
    """The fields of a solver.prototxt that convnet uses: ``net``, ``base_lr``,
    ``lr_policy``, ``gamma``, ``power``, ``stepsize``, ``stepvalue`` (list), ``momentum``,
    ``momentum2``, ``delta``, ``weight_decay``, ``max_iter``, ``iter_size``, ``snapshot``,
    ``snapshot_prefix``, ``type`` ("SGD" or "Adam"), ``display``, ``test_iter`` (list),
    ``test_interval``, ``random_seed``, plus ``source`` (the file) and ``message`` (the
    parsed SolverParameter)."""

    def __init__(self, message, source):
        self.message = message
        self.source = source
        m = message
        where = source

        def get(name, default=None):
            if not m.HasField(name):
                return default
            value = getattr(m, name)
            if isinstance(value, float):
                # the file's decimal, not its float32 rounding (0.001, not 0.0010000000475)
                value = float(str(np.float32(value)))
            return value

        self.net = get("net") or get("train_net")
        if self.net is None and not m.HasField("net_param") and \
                not m.HasField("train_net_param"):
            raise ConfigError(f"{where}: the solver names no net (give net: \"...\")")
        self.base_lr = float(get("base_lr", 0.0))
        if not m.HasField("base_lr"):
            raise ConfigError(f"{where}: base_lr is required")
        self.lr_policy = get("lr_policy", "fixed")
        if self.lr_policy not in POLICIES:
            raise ConfigError(f"{where}: lr_policy '{self.lr_policy}' is not supported; "
                              f"expected one of {', '.join(POLICIES)}")
        for need in POLICIES[self.lr_policy]:
            present = len(m.stepvalue) > 0 if need == "stepvalue" else m.HasField(need)
            if not present:
                raise ConfigError(f"{where}: lr_policy '{self.lr_policy}' needs {need}")
        self.gamma = float(get("gamma", 0.1))
        self.power = float(get("power", 1.0))
        self.stepsize = get("stepsize")
        self.stepvalue = [int(v) for v in m.stepvalue]
        self.momentum = float(get("momentum", 0.0))
        self.momentum2 = float(get("momentum2", 0.999))
        self.delta = float(get("delta", 1e-8))
        self.weight_decay = float(get("weight_decay", 0.0))
        if m.regularization_type != "L2":
            raise ConfigError(f"{where}: regularization_type '{m.regularization_type}' is not "
                              f"supported (convnet's weight decay is L2)")
        if m.HasField("clip_gradients") and m.clip_gradients >= 0:
            raise ConfigError(f"{where}: clip_gradients is not supported")
        self.max_iter = get("max_iter")
        if self.max_iter is None:
            raise ConfigError(f"{where}: max_iter is required")
        self.iter_size = int(m.iter_size)
        self.snapshot = int(m.snapshot)
        self.snapshot_prefix = get("snapshot_prefix", "")
        kind = get("type")
        if kind is None and m.HasField("solver_type"):
            kind = _OLD_TYPES[m.DESCRIPTOR.fields_by_name["solver_type"].enum_type
                              .values_by_number[m.solver_type].name]
        kind = kind or "SGD"
        if kind.upper() not in _TYPES:
            raise ConfigError(f"{where}: solver type '{kind}' is not supported; convnet has "
                              f"SGD and Adam")
        self.type = _TYPES[kind.upper()]
        self.display = int(get("display", 0))
        self.test_iter = [int(v) for v in m.test_iter]
        self.test_interval = int(m.test_interval)
        self.random_seed = int(m.random_seed)

    def net_path(self):
        """The net file, relative to the working directory or else to the solver file."""
        if self.net is None:
            return None
        if os.path.isabs(self.net) or os.path.exists(self.net) or self.source == "<text>":
            return self.net
        beside = os.path.join(os.path.dirname(self.source), self.net)
        return beside if os.path.exists(beside) else self.net

    def load_net(self, phase="TRAIN", **kwargs):
        """The solver's net as a convnet Net (``phase`` TRAIN by default)."""
        from convnet.caffe import load_net
        m = self.message
        if self.net is None:
            inline = m.net_param if m.HasField("net_param") else m.train_net_param
            return load_net(inline.SerializeToString(), phase=phase, **kwargs)
        return load_net(self.net_path(), phase=phase, **kwargs)

    def build(self, net, data=None):
        """The convnet solver for ``net`` with these hyper-parameters."""
        from convnet.solvers import AdamSolver, SGDSolver
        common = dict(base_lr=self.base_lr, weight_decay=self.weight_decay,
                      lr_policy=self.lr_policy, gamma=self.gamma,
                      stepsize=self.stepsize, power=self.power, max_iter=self.max_iter,
                      iter_size=self.iter_size, data=data)
        if self.lr_policy == "multistep":
            common["stepvalues"] = self.stepvalue
        if self.type == "Adam":
            return AdamSolver(net, momentum=self.momentum or 0.9, momentum2=self.momentum2,
                              delta=self.delta, **common)
        return SGDSolver(net, momentum=self.momentum, **common)

    def __repr__(self):
        return (f"<SolverConfig {self.source}: {self.type} base_lr={self.base_lr} "
                f"lr_policy={self.lr_policy} max_iter={self.max_iter}>")


def load_solver(path_or_text):
    """Parse a ``solver.prototxt`` (a path, or the text itself) into a SolverConfig."""
    data, source = prototxt._read_source(path_or_text, "solver")
    message, _ = prototxt.parse_message(data, "SolverParameter", source, "bvlc")
    return SolverConfig(message, source)
