//! Shard hashes, named as `streaming/base/hashing.py` names them.
//!
//! Streaming accepts every `hashlib` constructor that is a module attribute (md5, sha1, sha2,
//! sha3, blake2b/blake2s at their default digest sizes) and every `xxhash` algorithm (xxh32,
//! xxh64, xxh3_64, xxh3_128, and `xxh128`, an alias of xxh3_128). The digest is `hexdigest()`:
//! lowercase hex; xxhash digests are the canonical big-endian form of the value with seed 0.

use std::fmt;

use super::error::{MdsError, Result};

/// A hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// `blake2b`.
    Blake2b,
    /// `blake2s`.
    Blake2s,
    /// `md5`.
    Md5,
    /// `sha1`.
    Sha1,
    /// `sha224`.
    Sha224,
    /// `sha256`.
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
    /// `sha3_224`.
    Sha3_224,
    /// `sha3_256`.
    Sha3_256,
    /// `sha3_384`.
    Sha3_384,
    /// `sha3_512`.
    Sha3_512,
    /// `xxh128`.
    Xxh128,
    /// `xxh32`.
    Xxh32,
    /// `xxh3_128`.
    Xxh3_128,
    /// `xxh3_64`.
    Xxh3_64,
    /// `xxh64`.
    Xxh64,
}

impl HashAlgo {
    /// Every algorithm, sorted by name.
    pub const ALL: [HashAlgo; 17] = [
        HashAlgo::Blake2b,
        HashAlgo::Blake2s,
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha224,
        HashAlgo::Sha256,
        HashAlgo::Sha384,
        HashAlgo::Sha3_224,
        HashAlgo::Sha3_256,
        HashAlgo::Sha3_384,
        HashAlgo::Sha3_512,
        HashAlgo::Sha512,
        HashAlgo::Xxh128,
        HashAlgo::Xxh32,
        HashAlgo::Xxh3_128,
        HashAlgo::Xxh3_64,
        HashAlgo::Xxh64,
    ];

    /// Streaming's name for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Blake2b => "blake2b",
            HashAlgo::Blake2s => "blake2s",
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha224 => "sha224",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha384 => "sha384",
            HashAlgo::Sha512 => "sha512",
            HashAlgo::Sha3_224 => "sha3_224",
            HashAlgo::Sha3_256 => "sha3_256",
            HashAlgo::Sha3_384 => "sha3_384",
            HashAlgo::Sha3_512 => "sha3_512",
            HashAlgo::Xxh128 => "xxh128",
            HashAlgo::Xxh32 => "xxh32",
            HashAlgo::Xxh3_128 => "xxh3_128",
            HashAlgo::Xxh3_64 => "xxh3_64",
            HashAlgo::Xxh64 => "xxh64",
        }
    }

    /// Parses a streaming hash name; `origin` names where it came from, for the error.
    pub fn parse(name: &str, origin: &str) -> Result<HashAlgo> {
        HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| MdsError::UnknownHash {
                origin: origin.to_string(),
                name: name.to_string(),
                expected: HashAlgo::ALL.map(HashAlgo::name).join(", "),
            })
    }

    /// `hexdigest()` of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        use sha2::Digest;
        fn hex_of(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        match self {
            HashAlgo::Blake2b => hex_of(&blake2::Blake2b512::digest(data)),
            HashAlgo::Blake2s => hex_of(&blake2::Blake2s256::digest(data)),
            HashAlgo::Md5 => hex_of(&md5::Md5::digest(data)),
            HashAlgo::Sha1 => hex_of(&sha1::Sha1::digest(data)),
            HashAlgo::Sha224 => hex_of(&sha2::Sha224::digest(data)),
            HashAlgo::Sha256 => hex_of(&sha2::Sha256::digest(data)),
            HashAlgo::Sha384 => hex_of(&sha2::Sha384::digest(data)),
            HashAlgo::Sha512 => hex_of(&sha2::Sha512::digest(data)),
            HashAlgo::Sha3_224 => hex_of(&sha3::Sha3_224::digest(data)),
            HashAlgo::Sha3_256 => hex_of(&sha3::Sha3_256::digest(data)),
            HashAlgo::Sha3_384 => hex_of(&sha3::Sha3_384::digest(data)),
            HashAlgo::Sha3_512 => hex_of(&sha3::Sha3_512::digest(data)),
            HashAlgo::Xxh32 => format!("{:08x}", xxhash_rust::xxh32::xxh32(data, 0)),
            HashAlgo::Xxh64 => format!("{:016x}", xxhash_rust::xxh64::xxh64(data, 0)),
            HashAlgo::Xxh3_64 => format!("{:016x}", xxhash_rust::xxh3::xxh3_64(data)),
            HashAlgo::Xxh3_128 | HashAlgo::Xxh128 => {
                format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data))
            }
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_vectors() {
        // Values from Python: hashlib.<algo>(b"abc").hexdigest(), xxhash.<algo>(b"abc").hexdigest().
        let cases = [
            (HashAlgo::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (HashAlgo::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                HashAlgo::Sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                HashAlgo::Sha3_256,
                "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532",
            ),
            (
                HashAlgo::Blake2s,
                "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982",
            ),
            (HashAlgo::Xxh32, "32d153ff"),
            (HashAlgo::Xxh64, "44bc2cf5ad770999"),
            (HashAlgo::Xxh3_64, "78af5f94892f3950"),
            (HashAlgo::Xxh3_128, "06b05ab6733a618578af5f94892f3950"),
            (HashAlgo::Xxh128, "06b05ab6733a618578af5f94892f3950"),
        ];
        for (algo, want) in cases {
            assert_eq!(algo.hex(b"abc"), want, "{algo}");
        }
    }

    #[test]
    fn names_parse_back_and_unknown_names_are_listed() {
        for a in HashAlgo::ALL {
            assert_eq!(HashAlgo::parse(a.name(), "t").unwrap(), a);
        }
        let err = HashAlgo::parse("crc32", "index.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("crc32") && err.contains("xxh64") && err.contains("index.json"),
            "{err}"
        );
    }
}
