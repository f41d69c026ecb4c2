//! What the monitor itself reads from a container's bundle. The runtime
//! interprets `config.json`; the monitor only looks at the annotations CRI-O
//! writes there for settings that the createContainer request does not
//! carry.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::CoreError;

/// The annotation in which CRI-O records the container's `stdin_once`
/// (`"true"` or `"false"`): whether the end of the first attach's stdin
/// closes the container's stdin.
pub const STDIN_ONCE_ANNOTATION: &str = "io.kubernetes.cri-o.StdinOnce";

/// Largest `config.json` the monitor reads. CRI-O's are tens of KiB; the
/// bound keeps a bundle that is not what it seems from costing memory.
const CONFIG_JSON_MAX: u64 = 16 << 20;

/// The `stdin_once` setting of the bundle at `bundle`: its
/// [`STDIN_ONCE_ANNOTATION`], false when the annotation is absent.
pub fn read_stdin_once(bundle: &Path) -> Result<bool, CoreError> {
    let path = bundle.join("config.json");
    let context = || format!("read {}", path.display());
    let file = File::open(&path).map_err(|e| CoreError::io(context(), e))?;
    let mut config = Vec::new();
    file.take(CONFIG_JSON_MAX + 1)
        .read_to_end(&mut config)
        .map_err(|e| CoreError::io(context(), e))?;
    if config.len() as u64 > CONFIG_JSON_MAX {
        return Err(CoreError::Invalid {
            field: "bundle config.json",
            value: path.display().to_string(),
            reason: format!("larger than {CONFIG_JSON_MAX} bytes"),
        });
    }
    let config: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| CoreError::Invalid {
            field: "bundle config.json",
            value: path.display().to_string(),
            reason: e.to_string(),
        })?;
    stdin_once_of(&config)
}

/// The [`STDIN_ONCE_ANNOTATION`] of an OCI `config.json`: false when the
/// annotation (or the annotations object) is absent, an error naming the
/// annotation and its value when it is neither `"true"` nor `"false"`.
pub fn stdin_once_of(config: &serde_json::Value) -> Result<bool, CoreError> {
    let Some(value) = config
        .get("annotations")
        .and_then(|a| a.get(STDIN_ONCE_ANNOTATION))
    else {
        return Ok(false);
    };
    match value.as_str() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(CoreError::Invalid {
            field: "annotation io.kubernetes.cri-o.StdinOnce",
            // A string as it is, anything else as JSON.
            value: value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string),
            reason: "want \"true\" or \"false\"".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_annotation(value: &str) -> serde_json::Value {
        json(&format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{"{STDIN_ONCE_ANNOTATION}":{value}}}}}"#
        ))
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn true_and_false_are_read() {
        assert!(stdin_once_of(&with_annotation("\"true\"")).unwrap());
        assert!(!stdin_once_of(&with_annotation("\"false\"")).unwrap());
    }

    #[test]
    fn absent_annotation_is_false() {
        assert!(!stdin_once_of(&json(r#"{"ociVersion":"1.0.2"}"#)).unwrap());
        assert!(!stdin_once_of(&json(r#"{"annotations":{"other":"true"}}"#)).unwrap());
    }

    #[test]
    fn malformed_value_is_an_error_naming_annotation_and_value() {
        let err = stdin_once_of(&with_annotation("\"yes\"")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(STDIN_ONCE_ANNOTATION) && msg.contains("'yes'"),
            "{msg}"
        );
        let err = stdin_once_of(&with_annotation("true")).unwrap_err();
        assert!(err.to_string().contains("'true'"), "{err}");
    }

    #[test]
    fn a_bundle_file_is_read_and_its_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("ringmon-bundle-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.json");
        std::fs::write(&config, with_annotation("\"true\"").to_string()).unwrap();
        assert!(read_stdin_once(&dir).unwrap());
        std::fs::write(&config, "{not json").unwrap();
        let err = read_stdin_once(&dir).unwrap_err().to_string();
        assert!(err.contains(&config.display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
