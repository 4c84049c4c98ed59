//! Generated files: the unit every stage passes along (parsed from the
//! model's answer, validated, run in the sandbox, stored as artifacts,
//! served as a tar.gz).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One generated text file, with a path relative to the project root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    pub path: String,
    pub content: String,
}

impl File {
    pub fn new(path: impl Into<String>, content: impl Into<String>) -> File {
        File {
            path: path.into(),
            content: content.into(),
        }
    }

    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.content.as_bytes()))
    }
}

/// Packs files into a gzip-compressed tar archive (mode 0644, fixed mtime so
/// the same files give the same bytes).
pub fn tar_gz(files: &[File]) -> std::io::Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(encoder);
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, &file.path, file.content.as_bytes())?;
    }
    archive.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_tar_gz_round_trips_paths_and_contents() {
        let files = vec![
            File::new("app/main.py", "print('hi')\n"),
            File::new("README.md", "# x\n"),
        ];
        let bytes = tar_gz(&files).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            seen.push(File::new(entry.path().unwrap().to_str().unwrap(), content));
        }
        assert_eq!(seen, files);
    }
}
