"""The two data contracts of mvp-jax: stored image records and model batches.

Every source (ShapesWorld, the VinVL importer, custom datasets) produces **image records**; the
pipeline turns them into **batches** that `mvp_jax` models consume. Both are plain dicts of numpy
arrays / Python values so that tests can build them by hand.

Image record (one per image; captions are a list so region features are stored once):
  image_id:        str, unique within a split.
  image_png:       bytes, the encoded image (PNG or JPEG), or b'' when only features exist (VinVL);
                   pixel mode reads it, and needs no region features beyond the 6 box dims.
  image_size:      int32 [2], (height, width) in pixels of the image the boxes refer to.
  region_features: float32 [N, D]; the last 6 dims are the normalised box
                   [x1/w, y1/h, x2/w, y2/h, (x2-x1)/w, (y2-y1)/h] (spec §5.1).
  boxes:           float32 [N, 4], (x1, y1, x2, y2) in pixels.
  tags:            list[str] of length N, the detector class of each region (object tags).
  captions:        list[str] of length C.
  phrases:         list (length C) of lists of tuples of str: the scene-graph phrase tuples of each
                   caption, e.g. [('dog',), ('dog', 'brown'), ('man', 'ride', 'horse')].
  phrase_regions:  list (length C) of lists of int parallel to `phrases`: index of the region each
                   phrase is grounded to, -1 when unknown (gold links exist for ShapesWorld only).

Model batch (leading dim B = per-host batch; La = max_seq_length + max_phrases, T = max_tag_length,
R = max_img_seq_length, D = region feature dim), names as in the reference code and golden file:
  input_ids_a        int32 [B, La]     [CLS] words phrases [SEP] [PAD]...
  attention_mask_a   int32 [B, La]
  token_type_ids_a   int32 [B, La]
  input_ids_b        int32 [B, T]      [CLS] tags [SEP] [PAD]...
  token_type_ids_b   int32 [B, T]
  attention_mask_b   int32 [B, T + R]  tags block then region block
  img_feats          float32 [B, R, D] zero rows are padding
  phrase_index       int32 [B, 2]      [start, end) of the phrases in the cross-modal sequence
  img_index          int32 [B, 2]      [start, end) of the real regions in the cross-modal sequence
  mlm_labels_a       int32 [B, La]     original word id at corrupted word positions, else -1
  mlm_labels_b       int32 [B, T]      original tag id at corrupted tag positions, else -1
  phrase_region_links int32 [B, La]    at a phrase position: gold region slot (0..R-1), else -1
  image_index        int32 [B]         index of the image within its split (groups captions)
  example_index      int64 [B]         position of the example in the epoch-independent order
  example_valid      int32 [B]         1 for real examples, 0 for rows that pad the last eval batch

Pixel mode (`config.data.pixels`, the vision tower inside the model; ops.pixel_preprocess): the
record's encoded image (`image_png`: PNG or JPEG bytes) is decoded, augmented (training only) and
resized in-graph, and the batch holds `PIXEL_KEYS` instead of `img_feats`:
  pixels             float32 [B, H, W, 3] H = W = config.data.image_size, normalised as the tower's
                                      checkpoint expects (`config.data.image_norm`, image_ops.NORMS:
                                      SigLIP's value_range(-1, 1) = 'minus_one_to_one', or mean/std)
  region_boxes       float32 [B, R, 4] normalised (x0, y0, x1, y1) in [0, 1] of the R region slots
                                      in the frame of `pixels` (AFTER crop and flip; a crop keeps
                                      each at least 1/64 wide and high); the record's boxes (given
                                      boxes, scene boxes as a detector would give, grid cells);
                                      padded slots hold 0.
Region validity is `attention_mask_b[:, T:]` and `img_index` as with features; tags, text and labels
are unchanged (tags precomputed at import), except that a horizontal flip swaps the words 'left'
and 'right' in the text and its phrases.
"""

TEXT_KEYS = ('input_ids_a', 'attention_mask_a', 'token_type_ids_a')
VISUAL_KEYS = ('input_ids_b', 'token_type_ids_b', 'attention_mask_b', 'img_feats')
INDEX_KEYS = ('phrase_index', 'img_index')
LABEL_KEYS = ('mlm_labels_a', 'mlm_labels_b')
GROUNDING_KEYS = ('phrase_region_links',)
BOOKKEEPING_KEYS = ('image_index', 'example_index', 'example_valid')

MODEL_INPUT_KEYS = TEXT_KEYS + VISUAL_KEYS + INDEX_KEYS
BATCH_KEYS = MODEL_INPUT_KEYS + LABEL_KEYS + GROUNDING_KEYS + BOOKKEEPING_KEYS

PIXEL_KEYS = ('pixels', 'region_boxes')
PIXEL_MODEL_INPUT_KEYS = tuple(k for k in MODEL_INPUT_KEYS if k != 'img_feats') + PIXEL_KEYS
PIXEL_BATCH_KEYS = tuple(k for k in BATCH_KEYS if k != 'img_feats') + PIXEL_KEYS


def batch_keys(pixels: bool) -> tuple[str, ...]:
  """The keys of a batch: `PIXEL_BATCH_KEYS` in pixel mode, else `BATCH_KEYS`."""
  return PIXEL_BATCH_KEYS if pixels else BATCH_KEYS

RECORD_KEYS = ('image_id', 'image_png', 'image_size', 'region_features', 'boxes', 'tags',
               'captions', 'phrases', 'phrase_regions')

# Keys whose padding rows hold -1 (not 0): labels, links and indices where 0 is a real value.
NEGATIVE_PADDING_KEYS = ('mlm_labels_a', 'mlm_labels_b', 'phrase_region_links', 'image_index',
                         'example_index', 'question_id', 'label', 'region_iou')

NUM_BOX_DIMS = 6
# Region features beyond this magnitude are refused at import: finite but absurd values (3e38)
# overflow in the first layer and stop training far from the record that holds them.
MAX_ABS_FEATURE = 1e4
IGNORE_LABEL = -1
