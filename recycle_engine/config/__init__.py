"""Configuration: settings.yaml -> one frozen, checked Settings; every problem at once, with key path and line.

    source.py   the YAML reader: plain values, the line of every key path, `${NAME}` from the environment
    values.py   the checks of single values, `Section` (unknown and missing keys), `Need`
    model.py    the settings objects and the file's shape as pydantic models: each key's check, default,
                description in one place (how to add a gateway type: its docstring)
    load.py     load_settings (the passes and their problems), require, describe_settings

Callers import from here.
"""

from __future__ import annotations

from recycle_engine.config.load import (
    NEEDED_BY,
    describe_database,
    describe_settings,
    key_lines,
    load_settings,
    require,
)
from recycle_engine.config.model import (
    JOB_DEFAULTS,
    AnomalyThresholds,
    AtriProfile,
    BatchingSettings,
    Campaign,
    CampaignProduct,
    CascadeProfile,
    CrmSettings,
    EmailSettings,
    FlexFactorSettings,
    GatewaySettings,
    GatewayType,
    HttpSettings,
    JobSettings,
    NmiSettings,
    ReportSettings,
    ServeSettings,
    Settings,
    SettingsFile,
    SimulatedSettings,
    UnsetCredential,
    sections,
)
from recycle_engine.config.values import DEFAULT_DATABASE_URL, Need

__all__ = [
    "DEFAULT_DATABASE_URL",
    "JOB_DEFAULTS",
    "NEEDED_BY",
    "AnomalyThresholds",
    "AtriProfile",
    "BatchingSettings",
    "Campaign",
    "CampaignProduct",
    "CascadeProfile",
    "CrmSettings",
    "FlexFactorSettings",
    "GatewaySettings",
    "GatewayType",
    "HttpSettings",
    "JobSettings",
    "EmailSettings",
    "Need",
    "ReportSettings",
    "ServeSettings",
    "Settings",
    "SettingsFile",
    "NmiSettings",
    "SimulatedSettings",
    "UnsetCredential",
    "describe_database",
    "describe_settings",
    "key_lines",
    "load_settings",
    "require",
    "sections",
]
