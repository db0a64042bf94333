//! Models as the cluster moves them: a [`ModelBundle`] is what `verge ctl model deploy` sends to
//! the gateway and what nodes fetch from each other by digest; the views say what each node runs.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A model as one unit: its manifest (TOML, as `verge-infer` reads it) and its ONNX file. Its
/// digest is the hex SHA-256 of its bincode encoding, which the control plane records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelBundle {
    /// The model's name (the manifest's `name`).
    pub name: String,
    /// The manifest's text.
    pub manifest: String,
    /// The file name the manifest's `file` key gives the ONNX file.
    pub onnx_file: String,
    /// The ONNX file's bytes.
    pub onnx: Vec<u8>,
}

/// A model version the control plane records for the whole cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedModel {
    /// The model's name.
    pub name: String,
    /// The cluster's version number of it (1 for the first deploy, then 2, ...).
    pub version: u64,
    /// Hex SHA-256 of its bundle.
    pub digest: String,
    /// Size of its bundle in bytes.
    pub bytes: u64,
}

/// One model a node has loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningModel {
    /// The model's name.
    pub name: String,
    /// The manifest's version string.
    pub model_version: String,
    /// The cluster version it was deployed as; `None` for the model named in the node's config.
    pub cluster_version: Option<u64>,
    /// Digest of its bundle; `None` for the model named in the node's config.
    pub digest: Option<String>,
    /// Whether the node's predictions come from it.
    pub serving: bool,
}

/// The models one node runs, as it reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeModels {
    /// The node.
    pub node: NodeId,
    /// What it has loaded, by name.
    pub models: Vec<RunningModel>,
    /// Deploys it refused or could not carry out yet, each worded for an operator.
    pub problems: Vec<String>,
}

/// `verge ctl model list`: what the cluster should run and what every node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsView {
    /// The node that answered.
    pub node: NodeId,
    /// The versions the control plane records, by name.
    pub deployed: Vec<DeployedModel>,
    /// Every node's own report; a node that did not answer has `Err` with the reason.
    pub nodes: Vec<(NodeId, Result<NodeModels, String>)>,
}
