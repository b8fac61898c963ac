"""The Gateway API Inference Extension's kinds as its v1.5.0 release defines them, for
checking deploy/kubernetes/ without a cluster: the InferencePool (its CRD's fields,
bounds and rules), the EndpointPickerConfig (the rules its loader applies at start), and
the HTTPRoute fields the manifests use (Gateway API v1). Written from GIE's API
reference, not copied from it: a field this release does not know is refused."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GIE_RELEASE = "v1.5.0"
# The scheduling plugins the EPP of that release registers (cmd/epp/runner).
PLUGIN_TYPES = frozenset(
    {
        "single-profile-handler",
        "max-score-picker",
        "random-picker",
        "weighted-random-picker",
        "prefix-cache-scorer",
        "kv-cache-utilization-scorer",
        "queue-scorer",
        "running-requests-size-scorer",
        "lora-affinity-scorer",
        "token-load-scorer",
    }
)
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
GROUP = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

Name = Annotated[str, Field(min_length=1, max_length=253)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    """Unknown fields are errors, as a structural CRD schema prunes and kubectl warns."""

    model_config = ConfigDict(extra="forbid")


class Metadata(Strict):
    """The object metadata the manifests set."""

    name: Name
    namespace: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = None
    labels: dict[str, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]] = {}
    annotations: dict[str, str] = {}


class Port(Strict):
    """A port by number."""

    number: PortNumber


class EndpointPickerRef(Strict):
    """The pool's endpoint picker: a Service and its port."""

    group: Annotated[str, Field(pattern=GROUP, max_length=253)] = ""
    kind: Annotated[str, Field(pattern=KIND, min_length=1, max_length=63)] = "Service"
    name: Name
    port: Port | None = None
    failureMode: Literal["FailOpen", "FailClose"] = "FailClose"

    @model_validator(mode="after")
    def _port_for_services(self) -> EndpointPickerRef:
        if self.kind == "Service" and self.port is None:
            raise ValueError("port is required when kind is 'Service' or unspecified")
        return self


class Selector(Strict):
    """Pods by their labels (matchLabels only, like a Service's selector)."""

    matchLabels: Annotated[
        dict[str, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]],
        Field(min_length=1, max_length=64),
    ]


class InferencePoolSpec(Strict):
    """What the pool selects and where its picker is."""

    selector: Selector
    targetPorts: Annotated[list[Port], Field(min_length=1, max_length=8)]
    endpointPickerRef: EndpointPickerRef | None = None
    appProtocol: Literal["http", "kubernetes.io/h2c"] = "http"

    @model_validator(mode="after")
    def _unique_ports(self) -> InferencePoolSpec:
        numbers = [port.number for port in self.targetPorts]
        if len(set(numbers)) != len(numbers):
            raise ValueError("port number must be unique")
        return self


class InferencePool(Strict):
    """inference.networking.k8s.io/v1 InferencePool."""

    apiVersion: Literal["inference.networking.k8s.io/v1"]
    kind: Literal["InferencePool"]
    metadata: Metadata
    spec: InferencePoolSpec


class PluginSpec(Strict):
    """One plugin instance; named by its type unless given a name."""

    name: str | None = None
    type: str
    parameters: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        """The name a profile refers to it by."""
        return self.name or self.type


class ProfilePlugin(Strict):
    """A plugin used by a profile, with a scorer's weight."""

    pluginRef: Annotated[str, Field(min_length=1)]
    weight: Annotated[float, Field(ge=0)] | None = None


class SchedulingProfile(Strict):
    """A named set of filters, scorers and a picker."""

    name: Annotated[str, Field(min_length=1)]
    plugins: list[ProfilePlugin]


class EndpointPickerConfig(Strict):
    """inference.networking.x-k8s.io/v1alpha1 EndpointPickerConfig, read by the EPP at
    start (not a CRD), with its loader's checks: known plugin types, profiles named
    once, every reference to a plugin defined."""

    apiVersion: Literal["inference.networking.x-k8s.io/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    featureGates: list[str] | None = None
    plugins: Annotated[list[PluginSpec], Field(min_length=1)]
    schedulingProfiles: Annotated[list[SchedulingProfile], Field(min_length=1)]
    saturationDetector: dict[str, Any] | None = None
    dataLayer: dict[str, Any] | None = None
    flowControl: dict[str, Any] | None = None
    parser: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _references(self) -> EndpointPickerConfig:
        unknown = sorted({p.type for p in self.plugins} - PLUGIN_TYPES)
        if unknown:
            raise ValueError(f"plugin types unknown to GIE {GIE_RELEASE}: {unknown}")
        refs = [p.ref for p in self.plugins]
        if len(set(refs)) != len(refs):
            raise ValueError("two plugins share a name")
        names = [profile.name for profile in self.schedulingProfiles]
        if len(set(names)) != len(names):
            raise ValueError("two scheduling profiles share a name")
        for profile in self.schedulingProfiles:
            for used in profile.plugins:
                if used.pluginRef not in refs:
                    raise ValueError(f"{profile.name} references undefined {used.pluginRef}")
        return self


class ParentRef(Strict):
    """The Gateway a route attaches to."""

    group: str = "gateway.networking.k8s.io"
    kind: str = "Gateway"
    name: Name
    namespace: str | None = None
    sectionName: str | None = None


class BackendRef(Strict):
    """A route's backend: here an InferencePool."""

    group: Annotated[str, Field(pattern=GROUP, max_length=253)] = ""
    kind: Annotated[str, Field(pattern=KIND, max_length=63)] = "Service"
    name: Name
    port: PortNumber | None = None
    weight: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


class PathMatch(Strict):
    """A path match."""

    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: Annotated[str, Field(max_length=1024, pattern=r"^/")] = "/"


class RouteMatch(Strict):
    """The path matches the manifests use."""

    path: PathMatch | None = None


class Timeouts(Strict):
    """Gateway API durations (e.g. 960s)."""

    request: Annotated[str, Field(pattern=r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")] | None = None
    backendRequest: Annotated[str, Field(pattern=r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")] | None = None


class RouteRule(Strict):
    """One rule: matches, backends, timeouts."""

    matches: Annotated[list[RouteMatch], Field(max_length=64)] = []
    backendRefs: Annotated[list[BackendRef], Field(max_length=16)] = []
    timeouts: Timeouts | None = None


class HTTPRouteSpec(Strict):
    """Where the route attaches and what it sends where."""

    parentRefs: Annotated[list[ParentRef], Field(max_length=32)]
    hostnames: list[str] = []
    rules: Annotated[list[RouteRule], Field(min_length=1, max_length=16)]


class HTTPRoute(Strict):
    """gateway.networking.k8s.io/v1 HTTPRoute (the fields the manifests use)."""

    apiVersion: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["HTTPRoute"]
    metadata: Metadata
    spec: HTTPRouteSpec
