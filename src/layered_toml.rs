//! TOML files read in layers: a base file and the drop-in files that override it (the
//! daemon's `posthaste.toml` and `conf.d/*.toml`), merged per key, then deserialized with
//! every type error reported at once, each naming the file and line it came from.
//!
//! A leaf: it knows nothing of the config it is used for.
//!
//! Merging: a table in a later file is merged key by key into the same table of the result;
//! any other value (a string, a number, a list) replaces the earlier one whole, as in
//! Postfix's `main.cf` or Dovecot's `conf.d`. So `[guard] allow = […]` in a drop-in is the
//! whole allow list, not an addition to it.
//!
//! Finding every error: serde stops at the first one. To report them all, the merged tree is
//! deserialized again and again; after each failure the key the error points at is taken
//! out, until the rest deserializes (or an error points at nothing we can take out). The
//! error spans are offsets into one virtual text: each file is parsed with as many spaces in
//! front of it as all the files before it are long, so an offset says which file it falls
//! in, and (spaces holding no newline) the line within that file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, Table, TableLike};

/// One file of the stack, in the order it applies (later wins).
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub text: String,
}

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
}

/// Something wrong with the contents of one of the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// None when serde could not say where (e.g. a required key missing in every file).
    pub at: Option<Location>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{}, line {}: {}", at.path.display(), at.line, self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug)]
pub enum LayerError {
    /// A file is not TOML at all; `message` is the parser's, with the line and a caret.
    Syntax { path: PathBuf, message: String },
    /// The files are TOML, but the merged values do not fit the type: all of them.
    Types(Vec<Problem>),
}

/// Deserialization passes before giving up on finding more errors (each pass removes one
/// offending key, so this bounds the problems reported, not the size of a file).
const MAX_PASSES: usize = 64;

/// Merge the layers and deserialize the result into `T`.
pub fn deserialize<T: serde::de::DeserializeOwned>(layers: &[Layer]) -> Result<T, LayerError> {
    let mut bases = Vec::with_capacity(layers.len());
    let mut merged: Option<Table> = None;
    let mut offset = 0;
    for layer in layers {
        // A byte-order mark is not TOML whitespace, and would not be at the start any more.
        let text = layer.text.strip_prefix('\u{feff}').unwrap_or(&layer.text);
        // The file alone first: its syntax errors then carry its own lines and columns.
        if let Err(e) = toml_edit::ImDocument::parse(text) {
            return Err(LayerError::Syntax { path: layer.path.clone(), message: e.to_string() });
        }
        let padded = format!("{}{text}", " ".repeat(offset));
        let doc = toml_edit::ImDocument::parse(padded.as_str())
            .map_err(|e| LayerError::Syntax { path: layer.path.clone(), message: e.to_string() })?;
        bases.push((offset, text.to_owned()));
        offset += text.len() + 1;
        match &mut merged {
            None => merged = Some(doc.as_table().clone()),
            Some(m) => merge(m, doc.as_table()),
        }
    }
    let mut tree = merged.unwrap_or_default();
    let locate = |pos: usize| -> Option<Location> {
        let i = bases.iter().rposition(|(base, _)| *base <= pos)?;
        let (base, text) = &bases[i];
        let within = (pos - base).min(text.len());
        let line = text.as_bytes()[..within].iter().filter(|b| **b == b'\n').count() + 1;
        Some(Location { path: layers[i].path.clone(), line })
    };
    let mut problems = Vec::new();
    // Tables something was taken out of (the root as None): a "missing field" error on one
    // of them afterwards is a consequence of our removal, not news.
    let mut emptied: Vec<Option<Range<usize>>> = Vec::new();
    for _ in 0..MAX_PASSES {
        let de = toml_edit::de::Deserializer::from(toml_edit::DocumentMut::from(tree.clone()));
        match T::deserialize(de) {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => break,
            Err(e) => {
                // An error about the whole document (a required key missing everywhere)
                // has no line worth naming and nothing to take out.
                let span = e.span().filter(|s| Some(s) != tree.span().as_ref());
                if !emptied.contains(&span) {
                    let at = span.clone().and_then(|s| locate(s.start));
                    problems.push(Problem { at, message: e.message().to_owned() });
                }
                match span.and_then(|s| remove_at(&mut tree, s.start)) {
                    Some(parent) => emptied.push(parent),
                    None => break,
                }
            }
        }
    }
    Err(LayerError::Types(problems))
}

/// `over` merged into `base`: tables key by key, anything else replaced.
fn merge(base: &mut dyn TableLike, over: &dyn TableLike) {
    for (key, item) in over.iter() {
        let both_tables = item.is_table_like() && base.get(key).is_some_and(Item::is_table_like);
        if both_tables {
            let dest = base.get_mut(key).expect("checked above");
            // An inline table cannot hold `[section]` tables: make it a table first.
            if let Item::Value(toml_edit::Value::InlineTable(t)) = dest {
                *dest = Item::Table(std::mem::take(t).into_table());
            }
            let dest = dest.as_table_like_mut().expect("checked above");
            merge(dest, item.as_table_like().expect("checked above"));
        } else {
            // Keep the later file's key (and so its position) for errors about the key.
            let formatted = over.key(key).cloned().unwrap_or_else(|| toml_edit::Key::new(key));
            base.remove(key);
            base.entry_format(&formatted).or_insert(item.clone());
        }
    }
}

/// Take out the innermost key whose name or value contains `pos`. Returns the span of the
/// table it was taken from (None for the root, or a table without one), or None when
/// nothing contains `pos`.
fn remove_at(table: &mut dyn TableLike, pos: usize) -> Option<Option<Range<usize>>> {
    let contains = |s: Option<Range<usize>>| s.is_some_and(|s| s.contains(&pos) || s.start == pos);
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    for key in keys {
        let key_span = table.key(&key).and_then(|k| k.span());
        let item = table.get_mut(&key).expect("listed above");
        let item_span = item.span();
        if let Some(inner) = item.as_table_like_mut() {
            if let Some(parent) = remove_at(inner, pos) {
                return Some(parent.or(item_span));
            }
        }
        if contains(key_span) || contains(item_span) {
            table.remove(&key);
            return Some(None);
        }
    }
    None
}

/// `dir/*.toml` in file-name order: the drop-ins of a config directory. Hidden files (editor
/// locks such as `.#site.toml`) and anything not ending in `.toml` are not read. A missing
/// directory has no drop-ins.
pub fn drop_ins(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        smtp: Smtp,
        #[serde(default)]
        list: Vec<String>,
    }

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Smtp {
        size: u64,
        level: String,
        on: bool,
    }

    fn layers(files: &[(&str, &str)]) -> Vec<Layer> {
        files.iter().map(|(p, t)| Layer { path: p.into(), text: (*t).into() }).collect()
    }

    #[test]
    fn later_files_win_per_key_and_lists_are_replaced() {
        let doc: Doc = deserialize(&layers(&[
            ("main.toml", "name = \"a\"\nlist = [\"x\", \"y\"]\n[smtp]\nsize = 1\nlevel = \"info\"\n"),
            ("conf.d/10.toml", "[smtp]\nsize = 2\n"),
            ("conf.d/20.toml", "list = [\"z\"]\nsmtp.on = true\n"),
        ]))
        .unwrap();
        assert_eq!(
            doc,
            Doc {
                name: "a".into(),
                smtp: Smtp { size: 2, level: "info".into(), on: true },
                list: vec!["z".into()]
            }
        );
    }

    #[test]
    fn every_type_error_of_every_file_with_its_line() {
        let err = deserialize::<Doc>(&layers(&[
            ("main.toml", "name = \"a\"\n[smtp]\nsize = \"big\"\nbogus = 1\n"),
            ("conf.d/10.toml", "# site\n\n[smtp]\nlevel = 5\non = \"yes\"\n"),
        ]))
        .unwrap_err();
        let LayerError::Types(problems) = err else { panic!("{err:?}") };
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(all.len(), 4, "{all:#?}");
        for needle in [
            "main.toml, line 3: invalid type: string \"big\", expected u64",
            "main.toml, line 4: unknown field `bogus`",
            "conf.d/10.toml, line 4: invalid type: integer `5`, expected a string",
            "conf.d/10.toml, line 5: invalid type: string \"yes\", expected a boolean",
        ] {
            assert!(all.iter().any(|p| p.starts_with(needle)), "{needle} missing from {all:#?}");
        }
    }

    #[test]
    fn a_syntax_error_names_its_file_and_line() {
        let err = deserialize::<Doc>(&layers(&[("main.toml", "name = \"a\"\n"), ("site.toml", "x = \n")]))
            .unwrap_err();
        let LayerError::Syntax { path, message } = err else { panic!("{err:?}") };
        assert_eq!(path, Path::new("site.toml"));
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn a_missing_required_key_is_one_problem() {
        let LayerError::Types(p) = deserialize::<Doc>(&layers(&[("main.toml", "list = []\n")])).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("missing field `name`"), "{p:?}");
    }

    #[test]
    fn drop_ins_are_toml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["20-b.toml", "10-a.toml", ".#10-a.toml", "README", "30.toml.dpkg-old"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("40-dir.toml")).unwrap();
        let names: Vec<String> = drop_ins(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a.toml", "20-b.toml"]);
        assert!(drop_ins(&dir.path().join("missing")).unwrap().is_empty());
    }
}
