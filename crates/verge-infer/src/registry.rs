//! The model registry: the models a node serves, by name, each swapped atomically.
//!
//! A load builds and checks the new model completely *before* it touches the registry; only a
//! model that passed every check replaces the old one, in one pointer swap under a write lock held
//! for that swap alone. A prediction clones the current `Arc<Model>` under a read lock and runs
//! outside it, so a swap neither waits for running predictions nor disturbs them: they finish on
//! the model they started with, and the old model is dropped when the last of them ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::{LoadError, PredictError};
use crate::manifest::Signature;
use crate::model::Model;

/// Models by name. Share it as `Arc<Registry>` (or `&Registry`); every method takes `&self`.
#[derive(Debug, Default)]
pub struct Registry {
    models: RwLock<BTreeMap<String, Arc<Model>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the model `manifest_path` describes and, once it passed every check, serves it under
    /// the manifest's name, replacing the model of that name (if any). Returns the new model.
    ///
    /// # Errors
    ///
    /// [`LoadError`] naming the file and the problem; the registry is then unchanged, and the
    /// previously loaded model of that name keeps serving.
    pub fn load(
        &self,
        manifest_path: impl AsRef<Path>,
        expected: Option<&Signature>,
    ) -> Result<Arc<Model>, LoadError> {
        let model = Arc::new(Model::load(manifest_path, expected)?);
        self.insert(Arc::clone(&model));
        Ok(model)
    }

    /// Like [`Registry::load`], but refuses a manifest whose name is not `name`: for a node
    /// config that says which file holds which model.
    ///
    /// # Errors
    ///
    /// [`LoadError::Name`] or any other [`LoadError`]; the registry is then unchanged.
    pub fn load_as(
        &self,
        name: &str,
        manifest_path: impl AsRef<Path>,
        expected: Option<&Signature>,
    ) -> Result<Arc<Model>, LoadError> {
        let path = manifest_path.as_ref();
        let model = Model::load(path, expected)?;
        if model.name() != name {
            return Err(LoadError::Name {
                path: path.to_owned(),
                found: model.name().to_owned(),
                expected: name.to_owned(),
            });
        }
        let model = Arc::new(model);
        self.insert(Arc::clone(&model));
        Ok(model)
    }

    /// Serves `model` under its name, replacing the one there; returns the replaced model.
    pub fn insert(&self, model: Arc<Model>) -> Option<Arc<Model>> {
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        models.insert(model.name().to_owned(), model)
    }

    /// Stops serving the model `name`; returns it. Predictions already running finish on it.
    pub fn remove(&self, name: &str) -> Option<Arc<Model>> {
        let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
        models.remove(name)
    }

    /// The model served as `name` now.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        models.get(name).cloned()
    }

    /// `(name, version)` of every model served, by name.
    pub fn list(&self) -> Vec<(String, String)> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        models
            .values()
            .map(|m| (m.name().to_owned(), m.version().to_owned()))
            .collect()
    }

    /// Predicts `input` (whole rows) with the model served as `name`.
    ///
    /// # Errors
    ///
    /// [`PredictError::NoModel`] or what [`Model::predict`] returns.
    pub fn predict(&self, name: &str, input: &[f32]) -> Result<Vec<f32>, PredictError> {
        self.get(name)
            .ok_or_else(|| PredictError::NoModel(name.to_owned()))?
            .predict(input)
    }
}
