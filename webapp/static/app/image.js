// Photos are downscaled in the browser before upload: a phone's camera
// image is several MB, the exchange keeps attachments inline in the
// thread, and a 1600 px JPEG shows everything a requestor needs.

export const MAX_SIDE = 1600;

// downscale returns a JPEG data: URI of file, at most maxSide pixels on its
// long side, with its EXIF orientation applied.
export async function downscale(file, maxSide = MAX_SIDE, quality = 0.82) {
  let src;
  try {
    src = await createImageBitmap(file, {imageOrientation: 'from-image'});
  } catch {
    throw new Error('That file is not an image this browser can read.');
  }
  const scale = Math.min(1, maxSide / Math.max(src.width, src.height));
  const w = Math.max(1, Math.round(src.width * scale)), ht = Math.max(1, Math.round(src.height * scale));
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = ht;
  const g = canvas.getContext('2d');
  g.fillStyle = '#fff'; // JPEG has no alpha
  g.fillRect(0, 0, w, ht);
  g.drawImage(src, 0, 0, w, ht);
  src.close?.();
  const blob = await new Promise((res) => canvas.toBlob(res, 'image/jpeg', quality));
  const dataURL = await new Promise((res, rej) => {
    const r = new FileReader();
    r.onload = () => res(r.result);
    r.onerror = () => rej(r.error);
    r.readAsDataURL(blob);
  });
  return {dataURL, width: w, height: ht, bytes: blob.size};
}
