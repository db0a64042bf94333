//! Model deploys: `verge ctl model deploy` hands the gateway a [`ModelBundle`]; the gateway checks
//! that it loads, keeps it under its digest and records `(name, version, digest, size)` through
//! the control plane; every node sees the new version in the replicated state, fetches the bundle
//! from a peer that has it (the gateway first), checks the digest, loads it off the store's thread
//! and hands it to the store actor, which switches between two batches of predictions.
//!
//! # The rules
//! - **Nothing half-loaded serves**: a bundle is checked (digest, size, name, manifest, ONNX
//!   shapes against the feature signature) completely before the switch; the gateway refuses a
//!   bad model before recording it, and a node that still cannot load a recorded one keeps its old
//!   model, says why in `verge ctl model list` and counts it in
//!   `verge_model_loads_total{result="failed"}`.
//! - **A switch never fails a prediction**: the store actor predicts and switches on one thread,
//!   so every batch runs wholly on the old model or wholly on the new one.
//! - **Bundles are kept on disk** (`data_dir/models/<digest>.bundle`, written atomically), so a
//!   restarted node switches to the recorded version without asking anyone, and can hand the
//!   bundle to peers that missed it.
//! - **Which model predicts**: the one named by the node's `[inference] model` manifest; a node
//!   configured without one predicts with the first model deployed to it. Other names are
//!   loaded and listed, not used for predictions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::{error, info, warn};
use verge_infer::{LoadError, Manifest, Model, features};
use verge_proto::model::{ModelBundle, NodeModels, RunningModel};
use verge_proto::peer::{PeerReply, PeerRequest};
use verge_proto::{CodecError, NodeId};

use crate::links::PeerLinks;
use crate::metrics::Metrics;

/// How long a peer may take to hand over a bundle.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a deploy this node could not carry out (no peer had the bundle) is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a model bundle was refused or could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bundle's bytes are not a bundle.
    #[error("model bundle {digest} does not decode: {source}")]
    Decode {
        /// Its digest.
        digest: String,
        /// The codec's reason.
        source: CodecError,
    },
    /// The bundle's name is not the manifest's, or not the name it was deployed under.
    #[error("the model is deployed as `{expected}` but its manifest names `{found}`")]
    Name {
        /// The name it was deployed under.
        expected: String,
        /// The manifest's name.
        found: String,
    },
    /// The ONNX file name would leave the bundle's directory.
    #[error("model `{name}`: the manifest's file `{file}` must be a plain file name next to it")]
    FileName {
        /// The model.
        name: String,
        /// The file name.
        file: String,
    },
    /// A digest that is not 64 hex digits (SHA-256).
    #[error("`{0}` is not a model digest (64 hex digits)")]
    Digest(String),
    /// Bytes whose digest or size is not what the control plane recorded.
    #[error("bundle from {from} hashes to {actual} ({bytes} bytes), expected {expected}")]
    Mismatch {
        /// Where the bytes came from.
        from: String,
        /// The digest expected.
        expected: String,
        /// The digest of what came.
        actual: String,
        /// How many bytes came.
        bytes: usize,
    },
    /// The bundle is larger than one frame may carry between nodes.
    #[error(
        "model bundle of {bytes} bytes exceeds net.frame_bytes_max ({max} bytes), so nodes could not pass it on"
    )]
    TooLarge {
        /// The bundle's size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// The bundle does not load (manifest, ONNX, shapes).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The model directory could not be written or read.
    #[error("model store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No peer handed over the bundle.
    #[error("no peer could hand over bundle {digest}: {detail}")]
    Unavailable {
        /// The bundle's digest.
        digest: String,
        /// What each peer answered.
        detail: String,
    },
}

impl ModelError {
    /// Whether trying again later may succeed (a peer with the bundle comes back).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ModelError::Unavailable { .. } | ModelError::Io { .. })
    }
}

/// Hex SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn check_digest(d: &str) -> Result<(), ModelError> {
    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ModelError::Digest(d.to_owned()))
    }
}

/// Reads the manifest at `path` and the ONNX file it names into one bundle (what `verge ctl
/// model deploy --file` sends).
///
/// # Errors
///
/// [`ModelError::Load`] for a manifest that does not parse or a file that cannot be read.
pub fn bundle_from_manifest(path: &Path) -> Result<ModelBundle, ModelError> {
    let manifest_text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let manifest = Manifest::parse(&manifest_text, path)?;
    let onnx_path = path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(&manifest.file);
    let onnx = std::fs::read(&onnx_path).map_err(|source| LoadError::Io {
        path: onnx_path.clone(),
        source,
    })?;
    let onnx_file = manifest
        .file
        .file_name()
        .and_then(|f| f.to_str())
        .filter(|f| Path::new(f) == manifest.file)
        .ok_or_else(|| ModelError::FileName {
            name: manifest.name.clone(),
            file: manifest.file.display().to_string(),
        })?
        .to_owned();
    Ok(ModelBundle {
        name: manifest.name,
        manifest: manifest_text,
        onnx_file,
        onnx,
    })
}

/// The bundles this node keeps, under `data_dir/models`.
#[derive(Debug)]
pub struct ModelCache {
    dir: PathBuf,
}

impl ModelCache {
    /// The cache in `dir`, created if missing.
    ///
    /// # Errors
    ///
    /// [`ModelError::Io`] if the directory cannot be created.
    pub fn open(dir: PathBuf) -> Result<Self, ModelError> {
        std::fs::create_dir_all(&dir).map_err(|source| ModelError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn bundle_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.bundle"))
    }

    /// The bundle `digest`, if kept here and intact.
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        check_digest(digest).ok()?;
        let path = self.bundle_path(digest);
        let bytes = std::fs::read(&path).ok()?;
        if self::digest(&bytes) == digest {
            Some(bytes)
        } else {
            warn!(file = %path.display(), "a kept model bundle does not match its digest; it will be fetched again");
            None
        }
    }

    /// Keeps `bytes` as bundle `digest`, durably (written aside, synced, renamed).
    ///
    /// # Errors
    ///
    /// [`ModelError::Io`] naming the file.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), ModelError> {
        check_digest(digest)?;
        let path = self.bundle_path(digest);
        let tmp = self.dir.join(format!("{digest}.tmp"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ModelError::Io { path, source }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }

    /// Unpacks `bundle` (kept as `digest`) next to its bundle file and loads it, checking it
    /// against the node's feature signature and the name `expected`. Blocking: builds tract
    /// plans (milliseconds); call it off the actors' threads.
    ///
    /// # Errors
    ///
    /// [`ModelError`] naming what is wrong; nothing is served from it.
    pub fn load(
        &self,
        digest: &str,
        bundle: &ModelBundle,
        expected: &str,
    ) -> Result<Model, ModelError> {
        check_digest(digest)?;
        if bundle.name != expected {
            return Err(ModelError::Name {
                expected: expected.to_owned(),
                found: bundle.name.clone(),
            });
        }
        if Path::new(&bundle.onnx_file)
            .file_name()
            .and_then(|f| f.to_str())
            != Some(bundle.onnx_file.as_str())
        {
            return Err(ModelError::FileName {
                name: bundle.name.clone(),
                file: bundle.onnx_file.clone(),
            });
        }
        let dir = self.dir.join(digest);
        let loaded = Self::unpack_and_load(&dir, bundle, expected);
        if loaded.is_err() {
            // A refused model leaves nothing behind.
            let _ = std::fs::remove_dir_all(&dir);
        }
        loaded
    }

    fn unpack_and_load(
        dir: &Path,
        bundle: &ModelBundle,
        expected: &str,
    ) -> Result<Model, ModelError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let manifest = dir.join("model.toml");
        std::fs::write(&manifest, &bundle.manifest).map_err(io(&manifest))?;
        let onnx = dir.join(&bundle.onnx_file);
        std::fs::write(&onnx, &bundle.onnx).map_err(io(&onnx))?;
        let model = Model::load(&manifest, Some(&features::SIGNATURE))?;
        if model.name() != expected {
            return Err(ModelError::Name {
                expected: expected.to_owned(),
                found: model.name().to_owned(),
            });
        }
        Ok(model)
    }
}

/// Decodes bundle bytes.
///
/// # Errors
///
/// [`ModelError::Decode`].
pub fn decode_bundle(digest: &str, bytes: &[u8]) -> Result<ModelBundle, ModelError> {
    verge_proto::decode_body(bytes).map_err(|source| ModelError::Decode {
        digest: digest.to_owned(),
        source,
    })
}

#[derive(Debug, Default)]
struct BoardInner {
    models: BTreeMap<String, RunningModel>,
    /// Per name, the problem with its latest deploy (cleared once that name switches).
    problems: BTreeMap<String, String>,
    /// Per name, the digest this node refused for good (it will not try it again).
    refused: BTreeMap<String, String>,
}

/// What this node runs, for `verge ctl model list` and peers' questions.
#[derive(Debug, Clone, Default)]
pub struct ModelBoard(Arc<Mutex<BoardInner>>);

impl ModelBoard {
    fn with<R>(&self, f: impl FnOnce(&mut BoardInner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records a model loaded (from the config or a deploy).
    pub fn loaded(&self, model: RunningModel) {
        self.with(|b| {
            if model.serving {
                for m in b.models.values_mut() {
                    m.serving = false;
                }
            }
            b.problems.remove(&model.name);
            b.models.insert(model.name.clone(), model);
        });
    }

    /// Records a problem with the model `name`.
    pub fn problem(&self, name: &str, problem: String) {
        self.with(|b| b.problems.insert(name.to_owned(), problem));
    }

    /// Records that deploy `digest` of `name` was refused for good.
    fn refuse(&self, name: &str, digest: &str, problem: String) {
        self.with(|b| {
            b.refused.insert(name.to_owned(), digest.to_owned());
            b.problems.insert(name.to_owned(), problem);
        });
    }

    /// Whether version `version` with `digest` of `name` still has to be installed here.
    fn needs(&self, name: &str, version: u64, digest: &str) -> bool {
        self.with(|b| {
            let have = b
                .models
                .get(name)
                .is_some_and(|m| m.cluster_version.is_some_and(|v| v >= version));
            let refused = b.refused.get(name).is_some_and(|d| d == digest);
            !have && !refused
        })
    }

    /// This node's report.
    pub fn report(&self, node: &NodeId) -> NodeModels {
        self.with(|b| NodeModels {
            node: node.clone(),
            models: b.models.values().cloned().collect(),
            problems: b
                .problems
                .iter()
                .map(|(name, p)| format!("{name}: {p}"))
                .collect(),
        })
    }
}

/// What the deploy watcher needs.
#[derive(Debug)]
pub struct WatcherDeps {
    /// The control plane whose state names the versions.
    pub control: verge_control::Control,
    /// Requests to peers (to fetch bundles).
    pub links: PeerLinks,
    /// This node's bundles.
    pub cache: Arc<ModelCache>,
    /// The store actor, which predicts.
    pub store: actix::Addr<crate::storage::StoreActor>,
    /// What this node runs.
    pub board: ModelBoard,
    /// Metrics.
    pub metrics: Metrics,
}

/// Watches the control plane's model versions and installs each new one on this node.
pub fn spawn_watcher(deps: WatcherDeps) {
    tokio::spawn(async move {
        let mut state = deps.control.watch_state();
        loop {
            let wanted = state.borrow_and_update().models.clone();
            let mut retry = false;
            for (name, v) in wanted {
                if !deps.board.needs(&name, v.version, &v.digest) {
                    continue;
                }
                match install(&deps, &name, v.version, &v.digest, v.size).await {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() => {
                        warn!(model = %name, version = v.version, "cannot switch to the deployed model yet, will retry: {e}");
                        deps.board.problem(
                            &name,
                            format!("version {} not installed yet: {e}", v.version),
                        );
                        retry = true;
                    }
                    Err(e) => {
                        error!(model = %name, version = v.version, "refused the deployed model; the old one keeps serving: {e}");
                        deps.metrics.model_load(false);
                        deps.board.refuse(
                            &name,
                            &v.digest,
                            format!("version {} refused: {e}", v.version),
                        );
                    }
                }
            }
            if retry {
                tokio::select! {
                    r = state.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                }
            } else if state.changed().await.is_err() {
                return;
            }
        }
    });
}

async fn install(
    deps: &WatcherDeps,
    name: &str,
    version: u64,
    digest: &str,
    size: u64,
) -> Result<(), ModelError> {
    check_digest(digest)?;
    let bytes = match deps.cache.get(digest) {
        Some(b) => b,
        None => {
            let bytes = fetch(deps, digest, size).await?;
            deps.cache.put(digest, &bytes)?;
            bytes
        }
    };
    let bundle = decode_bundle(digest, &bytes)?;
    let cache = Arc::clone(&deps.cache);
    let (d, n) = (digest.to_owned(), name.to_owned());
    let model = tokio::task::spawn_blocking(move || cache.load(&d, &bundle, &n))
        .await
        .map_err(|e| ModelError::Unavailable {
            digest: digest.to_owned(),
            detail: format!("the load task failed: {e}"),
        })??;
    let model = Arc::new(model);
    let model_version = model.version().to_owned();
    let serving = deps
        .store
        .send(crate::storage::InstallModel {
            model: Arc::clone(&model),
        })
        .await
        .map_err(|e| ModelError::Unavailable {
            digest: digest.to_owned(),
            detail: format!("the store actor is unavailable: {e}"),
        })?;
    deps.metrics.model_load(true);
    info!(model = name, version, model_version = %model_version, digest, serving, "switched to the deployed model");
    deps.board.loaded(RunningModel {
        name: name.to_owned(),
        model_version,
        cluster_version: Some(version),
        digest: Some(digest.to_owned()),
        serving,
    });
    Ok(())
}

/// Fetches bundle `digest` from a peer: the gateway first, then the others.
async fn fetch(deps: &WatcherDeps, digest: &str, size: u64) -> Result<Vec<u8>, ModelError> {
    let leader = deps.control.leader().map(|l| l.id);
    let mut peers: Vec<NodeId> = deps.links.peers().cloned().collect();
    peers.sort_by_key(|p| Some(p) != leader.as_ref());
    let mut tried = Vec::new();
    for peer in peers {
        let req = PeerRequest::ModelBundle {
            digest: digest.to_owned(),
        };
        match deps.links.request(&peer, req, FETCH_TIMEOUT).await {
            Ok(PeerReply::ModelBundle(bytes)) => {
                let actual = self::digest(&bytes);
                if actual == digest && bytes.len() as u64 == size {
                    return Ok(bytes.to_vec());
                }
                let e = ModelError::Mismatch {
                    from: peer.to_string(),
                    expected: digest.to_owned(),
                    actual,
                    bytes: bytes.len(),
                };
                warn!("{e}");
                tried.push(format!("{peer}: {e}"));
            }
            Ok(PeerReply::Error(e)) => tried.push(format!("{peer}: {e}")),
            Ok(_) => tried.push(format!("{peer}: answered something else")),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(ModelError::Unavailable {
        digest: digest.to_owned(),
        detail: if tried.is_empty() {
            "this node has no peers".to_owned()
        } else {
            tried.join("; ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
    }

    #[test]
    fn a_bundle_round_trips_and_loads_from_the_cache() {
        let bundle =
            bundle_from_manifest(&models_dir().join("default/model.toml")).expect("bundle");
        assert_eq!(bundle.name, "default");
        assert_eq!(bundle.onnx_file, "model.onnx");
        let bytes = verge_proto::encode_body(&bundle).expect("encode");
        let d = digest(&bytes);
        assert_eq!(d.len(), 64);
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ModelCache::open(dir.path().join("models")).expect("cache");
        assert!(cache.get(&d).is_none());
        cache.put(&d, &bytes).expect("put");
        let back = cache.get(&d).expect("kept");
        assert_eq!(decode_bundle(&d, &back).expect("decode"), bundle);
        let model = cache.load(&d, &bundle, "default").expect("loads");
        assert_eq!(model.name(), "default");
        // A bundle whose bytes were damaged on disk is not served from the cache.
        std::fs::write(dir.path().join(format!("models/{d}.bundle")), b"garbage").expect("write");
        assert!(cache.get(&d).is_none());
    }

    #[test]
    fn bad_bundles_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ModelCache::open(dir.path().to_owned()).expect("cache");
        let good = bundle_from_manifest(&models_dir().join("default/model.toml")).expect("bundle");
        let d = "ab".repeat(32);
        // Deployed under another name.
        let e = cache.load(&d, &good, "other").expect_err("name");
        assert!(matches!(e, ModelError::Name { .. }), "{e}");
        // A file name that would leave the directory.
        let mut escape = good.clone();
        escape.onnx_file = "../x.onnx".into();
        let e = cache.load(&d, &escape, "default").expect_err("file");
        assert!(matches!(e, ModelError::FileName { .. }), "{e}");
        // Garbage for ONNX.
        let mut garbage = good.clone();
        garbage.onnx = b"not onnx".to_vec();
        let e = cache.load(&d, &garbage, "default").expect_err("onnx");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("model.onnx"), "{e}");
        // A manifest whose shapes do not match the node's features.
        let mut shapes = good.clone();
        shapes.manifest = shapes
            .manifest
            .replace("[\"batch\", 27]", "[\"batch\", 26]");
        let e = cache.load(&d, &shapes, "default").expect_err("shape");
        assert!(e.to_string().contains("26"), "{e}");
        // Digests are checked before they name a file.
        assert!(matches!(
            cache.put("../../etc/passwd", b"x"),
            Err(ModelError::Digest(_))
        ));
        assert!(cache.get("../x").is_none());
        assert!(decode_bundle(&d, b"\xff\xff\xff").is_err());
    }

    #[test]
    fn the_board_says_what_is_still_needed() {
        let board = ModelBoard::default();
        assert!(board.needs("default", 1, "d1"));
        board.loaded(RunningModel {
            name: "default".into(),
            model_version: "1.0.0".into(),
            cluster_version: Some(1),
            digest: Some("d1".into()),
            serving: true,
        });
        assert!(!board.needs("default", 1, "d1"));
        assert!(board.needs("default", 2, "d2"));
        board.refuse("default", "d2", "bad shapes".into());
        assert!(!board.needs("default", 2, "d2"));
        assert!(board.needs("default", 3, "d3"));
        let r = board.report(&"b1".parse().expect("id"));
        assert_eq!(r.models.len(), 1);
        assert_eq!(r.problems, vec!["default: bad shapes".to_owned()]);
    }
}
