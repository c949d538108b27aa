//! Metadata changes beyond retention: UpdateStream (device name, media type; versioned) and
//! tags (not versioned, as in Kinesis Video). Each change is written to `stream.json`
//! atomically before it becomes visible.

use std::collections::BTreeMap;

use super::{
    Store, StoreError, StreamInfo, StreamUpdate, TAGS_MAX, check_version, meta, new_version,
};
use crate::fragment::StreamName;

impl Store {
    /// Applies `update` if `current_version` matches; the stream gets a new version.
    pub fn update_stream(
        &self,
        name: &StreamName,
        current_version: &str,
        update: StreamUpdate,
    ) -> Result<StreamInfo, StoreError> {
        self.change_info(name, |info| {
            check_version(info, current_version)?;
            if let Some(device_name) = update.device_name {
                info.device_name = Some(device_name);
            }
            if let Some(media_type) = update.media_type {
                info.media_type = Some(media_type);
            }
            info.version = new_version();
            Ok(())
        })
    }

    /// Adds or overwrites tags; refused whole if the stream would hold more than [`TAGS_MAX`].
    pub fn tag_stream(
        &self,
        name: &StreamName,
        tags: BTreeMap<String, String>,
    ) -> Result<StreamInfo, StoreError> {
        self.change_info(name, |info| {
            let mut merged = info.tags.clone();
            merged.extend(tags);
            check_tag_count(&info.name, merged.len())?;
            info.tags = merged;
            Ok(())
        })
    }

    /// Removes the tags with these keys; keys the stream does not have are ignored.
    pub fn untag_stream(
        &self,
        name: &StreamName,
        keys: &[String],
    ) -> Result<StreamInfo, StoreError> {
        self.change_info(name, |info| {
            for key in keys {
                info.tags.remove(key);
            }
            Ok(())
        })
    }

    /// Runs `change` on a copy of the description, persists it, then publishes it: a failed
    /// write leaves the old description in memory and on disk.
    fn change_info(
        &self,
        name: &StreamName,
        change: impl FnOnce(&mut StreamInfo) -> Result<(), StoreError>,
    ) -> Result<StreamInfo, StoreError> {
        let stream = self.stream(name)?;
        let mut info = stream.lock_info();
        let mut updated = info.clone();
        change(&mut updated)?;
        meta::write_stream_info(stream.dir(), &updated)?;
        *info = updated.clone();
        Ok(updated)
    }
}

pub(super) fn check_tag_count(stream: &StreamName, tags: usize) -> Result<(), StoreError> {
    if tags > TAGS_MAX {
        return Err(StoreError::TagLimitExceeded {
            stream: stream.clone(),
            tags,
            limit: TAGS_MAX,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::UnixMillis;
    use crate::store::{NewStream, StoreConfig};

    fn store() -> (tempfile::TempDir, std::sync::Arc<Store>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        (dir, store)
    }

    fn name(s: &str) -> StreamName {
        StreamName::new(s).expect("valid")
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn updates_need_the_current_version_and_survive_a_reopen() {
        let (dir, store) = store();
        let info = store
            .create_stream(NewStream::named(name("cam")), UnixMillis(1))
            .expect("create");
        let update = StreamUpdate {
            device_name: Some("dev".into()),
            media_type: Some("video/h264".into()),
        };
        let err = store.update_stream(&name("cam"), "stale", update.clone());
        assert!(matches!(err, Err(StoreError::VersionMismatch { .. })));
        let updated = store
            .update_stream(&name("cam"), &info.version, update)
            .expect("update");
        assert_ne!(updated.version, info.version);
        assert_eq!(updated.device_name.as_deref(), Some("dev"));
        drop(store);
        let reopened = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
        assert_eq!(
            reopened.describe_stream(&name("cam")).expect("describe"),
            updated
        );
    }

    #[test]
    fn tags_merge_remove_persist_and_stop_at_the_limit() {
        let (dir, store) = store();
        let mut new = NewStream::named(name("cam"));
        new.tags = tags(&[("a", "1")]);
        let created = store.create_stream(new, UnixMillis(1)).expect("create");
        store
            .tag_stream(&name("cam"), tags(&[("a", "2"), ("b", "")]))
            .expect("tag");
        let info = store
            .untag_stream(&name("cam"), &["b".into(), "zz".into()])
            .expect("untag");
        assert_eq!(info.tags, tags(&[("a", "2")]));
        assert_eq!(
            info.version, created.version,
            "tags do not change the version"
        );
        let many: BTreeMap<String, String> = (0..TAGS_MAX)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let err = store.tag_stream(&name("cam"), many);
        assert!(matches!(
            err,
            Err(StoreError::TagLimitExceeded { tags: 51, .. })
        ));
        drop(store);
        let reopened = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
        let info = reopened.describe_stream(&name("cam")).expect("describe");
        assert_eq!(info.tags, tags(&[("a", "2")]));
    }
}
