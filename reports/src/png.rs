//! SVG to PNG with resvg, text set in the DejaVu Sans that ships inside this crate, so a PNG looks
//! the same on a machine without any fonts installed.

use std::sync::{Arc, OnceLock};

/// DejaVu Sans (Bitstream Vera license; see `assets/DejaVuSans-LICENSE.txt`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn options() -> &'static resvg::usvg::Options<'static> {
    static OPTIONS: OnceLock<resvg::usvg::Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut fonts = resvg::usvg::fontdb::Database::new();
        fonts.load_font_data(FONT.to_vec());
        fonts.set_sans_serif_family("DejaVu Sans");
        resvg::usvg::Options { fontdb: Arc::new(fonts), ..Default::default() }
    })
}

/// Renders `svg` at `scale` × its size as PNG bytes.
pub fn render(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    let tree = resvg::usvg::Tree::from_str(svg, options()).map_err(|e| format!("invalid SVG: {e}"))?;
    let size = tree.size();
    let (w, h) = ((size.width() * scale).ceil() as u32, (size.height() * scale).ceil() as u32);
    let mut pixmap = resvg::tiny_skia::Pixmap::new(w, h).ok_or("empty image")?;
    resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_shapes_and_text() {
        let svg = r#"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20"><rect width="40" height="20" fill="white"/><text x="2" y="15" font-family="DejaVu Sans" font-size="12">Ab</text></svg>"#;
        let png = render(svg, 2.0).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
        assert_eq!((pixmap.width(), pixmap.height()), (80, 40));
        // The text drew dark pixels: the embedded font was found.
        assert!(pixmap.pixels().iter().any(|p| p.red() < 100));
    }
}
