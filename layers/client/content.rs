//! Message content: plain text, or parts (text and images).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// What a [`Message`](super::Message) says: text, or a list of parts.
///
/// Most messages are text; [`Message::user("…")`](super::Message::user) still
/// takes a `&str`. Parts carry images next to text, by URL or inline as base64:
///
/// ```
/// use tower_llm_resilience::client::{ContentPart, Message};
///
/// let message = Message::user(vec![
///     ContentPart::text("What is in this picture?"),
///     ContentPart::image_url("https://example.com/cat.png"),
///     ContentPart::image_base64("image/png", "iVBORw0KGgo="),
/// ]);
/// assert_eq!(message.content.text(), "What is in this picture?");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Text only.
    Text(String),
    /// Text and images, in order.
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The text: all of it, or the text parts joined (images left out).
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Content::Text(text) => Cow::Borrowed(text),
            Content::Parts(parts) => {
                let mut texts = parts.iter().filter_map(ContentPart::as_text);
                match (texts.next(), texts.next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(only), None) => Cow::Borrowed(only),
                    (Some(first), Some(second)) => {
                        let mut joined = format!("{first}{second}");
                        joined.extend(texts);
                        Cow::Owned(joined)
                    }
                }
            }
        }
    }

    /// No text and no parts.
    pub fn is_empty(&self) -> bool {
        match self {
            Content::Text(text) => text.is_empty(),
            Content::Parts(parts) => parts.is_empty(),
        }
    }

    /// Whether any part is an image.
    pub fn has_images(&self) -> bool {
        matches!(self, Content::Parts(parts) if parts.iter().any(|p| matches!(p, ContentPart::Image { .. })))
    }
}

impl Default for Content {
    fn default() -> Self {
        Content::Text(String::new())
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Text(text)
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content::Text(text.to_owned())
    }
}

impl From<Vec<ContentPart>> for Content {
    fn from(parts: Vec<ContentPart>) -> Self {
        Content::Parts(parts)
    }
}

/// One part of a [`Content::Parts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image.
    Image {
        /// Where the image is.
        source: ImageSource,
        /// OpenAI's `detail` (`low`, `high`, `auto`); other providers ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }

    /// An image the provider fetches from `url`.
    pub fn image_url(url: impl Into<String>) -> Self {
        ContentPart::Image {
            source: ImageSource::Url { url: url.into() },
            detail: None,
        }
    }

    /// An image sent inline: `data` is the base64 of the file, `media_type` its
    /// type (`image/png`, `image/jpeg`, `image/gif`, `image/webp`).
    pub fn image_base64(media_type: impl Into<String>, data: impl Into<String>) -> Self {
        ContentPart::Image {
            source: ImageSource::Base64 {
                media_type: media_type.into(),
                data: data.into(),
            },
            detail: None,
        }
    }

    /// The text of a text part.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ContentPart::Text { text } => Some(text),
            ContentPart::Image { .. } => None,
        }
    }
}

/// Where an image of a [`ContentPart::Image`] is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ImageSource {
    /// At this URL (`https://…`), fetched by the provider.
    Url {
        /// The image's URL.
        url: String,
    },
    /// Inline, base64-encoded. OpenAI receives it as a `data:` URL.
    Base64 {
        /// The image's media type (`image/png`...).
        media_type: String,
        /// The base64 of the image file.
        data: String,
    },
}

impl ImageSource {
    /// The source for an OpenAI `image_url.url`: a `data:<type>;base64,<data>`
    /// URL is inline base64, anything else a URL.
    pub fn from_url(url: &str) -> Self {
        let inline = url
            .strip_prefix("data:")
            .and_then(|rest| rest.split_once(";base64,"));
        match inline {
            Some((media_type, data)) if !media_type.contains(',') => ImageSource::Base64 {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            },
            _ => ImageSource::Url {
                url: url.to_owned(),
            },
        }
    }

    /// The source as one URL (base64 as a `data:` URL), for OpenAI.
    pub fn to_url(&self) -> Cow<'_, str> {
        match self {
            ImageSource::Url { url } => Cow::Borrowed(url),
            ImageSource::Base64 { media_type, data } => {
                Cow::Owned(format!("data:{media_type};base64,{data}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_inline_images_and_back() {
        let inline = ImageSource::from_url("data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(
            inline,
            ImageSource::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            }
        );
        assert_eq!(inline.to_url(), "data:image/png;base64,iVBORw0KGgo=");
        let remote = ImageSource::from_url("https://example.com/a.png");
        assert_eq!(remote.to_url(), "https://example.com/a.png");
        assert!(matches!(
            ImageSource::from_url("data:text/plain,hi"),
            ImageSource::Url { .. }
        ));
    }

    #[test]
    fn text_joins_text_parts() {
        let parts = Content::Parts(vec![
            ContentPart::text("a"),
            ContentPart::image_url("u"),
            ContentPart::text("b"),
            ContentPart::text("c"),
        ]);
        assert_eq!(parts.text(), "abc");
        assert!(parts.has_images());
        assert_eq!(Content::from("x").text(), "x");
        assert!(Content::Parts(vec![]).is_empty());
    }
}
